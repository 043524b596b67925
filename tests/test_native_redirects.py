"""Native apps' private-use URI scheme redirects (RFC 8252 section 7.1), over real HTTP.

Cursor registers `cursor://anysphere.cursor-mcp/oauth/callback`, allowed by default; any other
private-use URI needs the operator's NATIVE_REDIRECT_URIS, and dangerous schemes never pass.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
from django.test import override_settings

from oauthapp.registration import redirect_uri_problem
from tests.support.live import ALICE, LiveServer, create_user, free_port, prepare_server
from tests.support.mcp_http import MCPHttp
from tests.support.oauth import Browser, OAuthClient, hidden_fields, pkce_pair, query_of

CURSOR = "cursor://anysphere.cursor-mcp/oauth/callback"


def register(url: str, *redirect_uris: str, name: str = "") -> httpx.Response:
    body = {
        "client_name": name or f"native-{secrets.token_hex(4)}",
        "redirect_uris": list(redirect_uris),
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    }
    return httpx.post(f"{url}/register", json=body, timeout=30)


def test_cursor_registers_its_redirect_and_completes_the_whole_flow(
    server: LiveServer, alice_browser: Browser
) -> None:
    registered = register(server.url, CURSOR, name="Cursor")
    assert registered.status_code == 201, registered.text
    assert registered.json()["redirect_uris"] == [CURSOR]
    client = OAuthClient(base_url=server.url, client_id=registered.json()["client_id"], redirect_uri=CURSOR)
    verifier, challenge = pkce_pair()
    params = client.authorize_params(challenge)

    consent = alice_browser.http.get("/authorize", params=params)
    assert consent.status_code == 200, consent.text
    assert "Authorize Cursor?" in consent.text
    assert "<code>cursor://anysphere.cursor-mcp</code>" in consent.text
    assert 'id="local-redirect-warning"' in consent.text  # the code goes to an app on this machine
    form = hidden_fields(consent.text)
    form["allow"] = "Authorize"
    approved = alice_browser.http.post(f"/authorize?{httpx.QueryParams(params)}", data=form)
    assert approved.status_code == 302
    location = approved.headers["location"]
    assert location.startswith(f"{CURSOR}?")
    callback = query_of(location)
    assert callback["state"] == params["state"]
    assert callback["iss"] == server.url
    assert callback["code"]

    token = client.exchange(callback["code"], verifier)
    assert token.status_code == 200, token.text
    mcp = MCPHttp(server.url, token.json()["access_token"])
    mcp.initialize()
    assert mcp.call("add", {"a": 23, "b": 19})["result"]["content"][0]["text"] == "42"
    mcp.close()


def test_denying_cursor_sends_access_denied_to_its_redirect(
    server: LiveServer, alice_browser: Browser
) -> None:
    client_id = register(server.url, CURSOR).json()["client_id"]
    client = OAuthClient(base_url=server.url, client_id=client_id, redirect_uri=CURSOR)
    query, _verifier = client.authorize(alice_browser, approve=False)
    assert query["error"] == "access_denied"
    assert query["iss"] == server.url


DANGEROUS = [
    "javascript:alert(document.cookie)",
    "JavaScript://anysphere.cursor-mcp/%0aalert(1)",
    "data:text/html,<script>alert(1)</script>",
    "file:///etc/passwd",
    "vbscript:msgbox(1)",
    "blob:https://example.com/uuid",
    "about:blank",
    "view-source:https://example.com/",
    "intent://callback#Intent;scheme=https;end",
]


@pytest.mark.parametrize("uri", DANGEROUS)
def test_it_refuses_a_dangerous_scheme(server: LiveServer, uri: str) -> None:
    name = f"dangerous-{secrets.token_hex(4)}"
    response = register(server.url, uri, name=name)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_redirect_uri"
    rows = server.sql("SELECT COUNT(*) FROM oauthapp_application WHERE name = ?", (name,))
    assert rows == [(0,)]


STRICT = {
    "other-cursor-path": "cursor://anysphere.cursor-mcp/oauth/callback/evil",
    "other-cursor-host": "cursor://evil.example/oauth/callback",
    "cursor-with-query": f"{CURSOR}?next=https://evil.example",
    "cursor-with-credentials": "cursor://user@anysphere.cursor-mcp/oauth/callback",
    "unlisted-reverse-domain": "com.example.app:/oauth/callback",
}


@pytest.mark.parametrize("uri", STRICT.values(), ids=STRICT.keys())
def test_it_stays_strict_for_private_use_uris_the_operator_did_not_allow(
    server: LiveServer, uri: str
) -> None:
    response = register(server.url, uri)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_redirect_uri"
    assert "must be allowed by the operator" in body["error_description"]


@override_settings(NATIVE_REDIRECT_URIS=["com.example.app:/*", "javascript:alert(1)"])
def test_operators_allow_exact_uris_and_prefixes_but_never_a_dangerous_scheme() -> None:
    assert redirect_uri_problem("com.example.app:/oauth/callback") is None
    assert redirect_uri_problem("com.example.app:/other") is None
    assert redirect_uri_problem("com.example.application:/oauth/callback") is not None
    # Listing it does not make a dangerous scheme acceptable.
    assert redirect_uri_problem("javascript:alert(1)") == "the javascript scheme is never allowed"
    # The list replaces the default: Cursor's is no longer allowed.
    assert redirect_uri_problem(CURSOR) is not None


def test_a_native_redirect_the_operator_stops_allowing_is_refused_before_consent(tmp_path: Path) -> None:
    """Cursor registered while allowed; after NATIVE_REDIRECT_URIS drops it, /authorize refuses
    on our page (never a redirect to cursor:, never a late failure after consent)."""
    first = prepare_server(tmp_path).start()
    try:
        create_user(first.env, *ALICE)
        client_id = register(first.url, CURSOR).json()["client_id"]
    finally:
        first.stop()
    port = free_port()
    env = {
        **first.env,
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "NATIVE_REDIRECT_URIS": "com.example.app:/*",
    }
    second = LiveServer(env=env, port=port, log_path=tmp_path / "second.log").start()
    try:
        browser = Browser(second.url)
        assert browser.login(*ALICE).status_code == 302
        client = OAuthClient(base_url=second.url, client_id=client_id, redirect_uri=CURSOR)
        page = browser.http.get("/authorize", params=client.authorize_params(pkce_pair()[1]))
        assert page.status_code == 400, page.text
        assert "This authorization request cannot continue" in page.text
        assert "location" not in page.headers
        browser.close()
    finally:
        second.stop()
    for server in (first, second):
        assert "Traceback" not in server.log_path.read_text(errors="replace")
