"""Every refusal of the authorization server, over real HTTP against the live server."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live import LiveServer, prepare_server
from tests.support.oauth import (
    CALLBACK,
    Browser,
    OAuthClient,
    admin_action,
    hidden_fields,
    introspect,
    pkce_pair,
    query_of,
)

# --- Registration (RFC 7591) -------------------------------------------------------------------


def register(url: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    return (
        httpx.post(f"{url}/register", json=body, timeout=30, **kwargs)
        if body is not None
        else httpx.post(f"{url}/register", timeout=30, **kwargs)
    )


def application_count(server: LiveServer, name: str) -> int:
    return server.sql("SELECT COUNT(*) FROM oauthapp_application WHERE name = ?", (name,))[0][0]


def assert_refused(
    response: httpx.Response, error: str, status: int = 400, *, described: bool = True
) -> dict[str, Any]:
    """An RFC 6749 section 5.2 error body; error_description is optional there, required of /register."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == error
    assert set(body) <= {"error", "error_description", "error_uri"}
    if described:
        assert body["error_description"]
    return body


def token_refused(response: httpx.Response, error: str, status: int = 400) -> dict[str, Any]:
    return assert_refused(response, error, status, described=False)


BAD_REDIRECT_URIS = {
    "javascript": "javascript:alert(document.cookie)",
    "data": "data:text/html,<script>alert(1)</script>",
    "file": "file:///etc/passwd",
    "custom-scheme": "com.example.app:/oauth/callback",
    "custom-scheme-authority": "myapp://callback",
    "http-non-loopback": "http://example.com/callback",
    "http-loopback-lookalike": "http://localhost.evil.example/callback",
    "fragment": "https://example.com/callback#frag",
    "userinfo": "https://user:secret@example.com/callback",
    "userinfo-loopback": "http://evil.example@localhost/callback",
    "unparseable-ipv6": "http://[::1/callback",
    "port-out-of-range": "https://example.com:99999/callback",
    "no-host": "https:///callback",
    "relative": "/oauth/callback",
    "whitespace": "https://example.com/call back",
    "empty-string": "",
    "too-long": "https://example.com/" + "a" * 2000,
}


@pytest.mark.parametrize("uri", BAD_REDIRECT_URIS.values(), ids=BAD_REDIRECT_URIS.keys())
def test_it_rejects_a_redirect_uri_outside_the_policy(server: LiveServer, uri: str) -> None:
    name = f"bad-redirect-{secrets.token_hex(4)}"
    response = register(server.url, {"client_name": name, "redirect_uris": [CALLBACK, uri]})
    assert_refused(response, "invalid_redirect_uri")
    assert application_count(server, name) == 0


BAD_REDIRECT_LISTS = {
    "empty-list": [],
    "string-not-list": CALLBACK,
    "number": 5,
    "null": None,
    "object": {"uri": CALLBACK},
    "list-of-number": [5],
    "list-of-list": [[CALLBACK]],
    "list-of-null": [None],
    "too-many": [f"http://localhost:{3000 + n}/cb" for n in range(11)],
}


@pytest.mark.parametrize("value", BAD_REDIRECT_LISTS.values(), ids=BAD_REDIRECT_LISTS.keys())
def test_it_rejects_redirect_uris_that_are_not_a_short_list_of_strings(
    server: LiveServer, value: Any
) -> None:
    name = f"bad-list-{secrets.token_hex(4)}"
    response = register(server.url, {"client_name": name, "redirect_uris": value})
    assert_refused(response, "invalid_redirect_uri")
    assert application_count(server, name) == 0


def test_it_rejects_a_registration_without_redirect_uris(server: LiveServer) -> None:
    name = f"no-redirect-{secrets.token_hex(4)}"
    assert_refused(register(server.url, {"client_name": name}), "invalid_redirect_uri")
    assert application_count(server, name) == 0


WRONG_TYPES = {
    "client_name-number": {"client_name": 5},
    "client_name-false": {"client_name": False},
    "client_name-too-long": {"client_name": "x" * 256},
    "scope-list": {"scope": ["mcp"]},
    "scope-number": {"scope": 0},
    "auth-method-unknown": {"token_endpoint_auth_method": "private_key_jwt"},
    "auth-method-list": {"token_endpoint_auth_method": ["none"]},
    "auth-method-number": {"token_endpoint_auth_method": 0},
    "grant_types-string": {"grant_types": "authorization_code"},
    "grant_types-implicit": {"grant_types": ["implicit"]},
    "grant_types-without-code": {"grant_types": ["refresh_token"]},
    "grant_types-number-item": {"grant_types": ["authorization_code", 1]},
    "response_types-token": {"response_types": ["token"]},
    "response_types-string": {"response_types": "code"},
    "contacts-string": {"contacts": "admin@example.com"},
    "contacts-object": {"contacts": {"email": "admin@example.com"}},
    "client_uri-number": {"client_uri": 5},
    "logo_uri-javascript": {"logo_uri": "javascript:alert(1)"},
    "software_id-object": {"software_id": {}},
}


@pytest.mark.parametrize("fields", WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_it_rejects_client_metadata_of_the_wrong_shape(server: LiveServer, fields: dict[str, Any]) -> None:
    marker = f"wrong-shape-{secrets.token_hex(4)}"
    body = {"redirect_uris": [CALLBACK], "software_version": marker, **fields}
    assert_refused(register(server.url, body), "invalid_client_metadata")
    assert (
        server.sql(
            "SELECT COUNT(*) FROM oauthapp_application WHERE registration_metadata LIKE ?", (f"%{marker}%",)
        )[0][0]
        == 0
    )


MALFORMED_BODIES = {
    "not-json": b"redirect_uris=http://localhost/cb",
    "truncated-json": b'{"redirect_uris": ["http://localhost/cb"',
    "empty": b"",
    "json-array": b'["http://localhost/cb"]',
    "json-string": b'"http://localhost/cb"',
    "json-null": b"null",
    "json-number": b"42",
    "invalid-utf8": b'{"client_name": "\xff\xfe"}',
    "deeply-nested": b"[" * 8000 + b"]" * 8000,
    "huge-integer": b'{"redirect_uris": ["http://localhost/cb"], "client_id_issued_at": '
    + b"9" * 5000
    + b"}",
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_it_rejects_a_registration_body_that_is_not_a_json_object(server: LiveServer, body: bytes) -> None:
    before = server.sql("SELECT COUNT(*) FROM oauthapp_application")[0][0]
    response = httpx.post(
        f"{server.url}/register", content=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert_refused(response, "invalid_client_metadata")
    assert server.sql("SELECT COUNT(*) FROM oauthapp_application")[0][0] == before


def test_it_rejects_an_oversized_registration_body_with_413(server: LiveServer) -> None:
    name = f"oversized-{secrets.token_hex(4)}"
    body = {"client_name": name, "redirect_uris": [CALLBACK], "padding": "x" * 20_000}
    body_refused = assert_refused(register(server.url, body), "invalid_client_metadata", status=413)
    assert "16384 bytes" in body_refused["error_description"]
    assert application_count(server, name) == 0


def test_it_rejects_an_oversized_chunked_registration_body_with_413(server: LiveServer) -> None:
    name = f"chunked-{secrets.token_hex(4)}"
    payload = (
        json.dumps({"client_name": name, "redirect_uris": [CALLBACK], "padding": "x" * 40_000})
    ).encode()

    def chunks():  # no Content-Length: the cap must hold for a streamed body too
        for start in range(0, len(payload), 4096):
            yield payload[start : start + 4096]

    response = httpx.post(
        f"{server.url}/register", content=chunks(), headers={"Content-Type": "application/json"}, timeout=30
    )
    assert_refused(response, "invalid_client_metadata", status=413)
    assert application_count(server, name) == 0


def test_registration_response_omits_unset_fields_and_shows_no_secret_for_a_public_client(
    server: LiveServer,
) -> None:
    response = register(server.url, {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"})
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert None not in body.values()
    assert set(body) == {
        "client_id",
        "client_id_issued_at",
        "redirect_uris",
        "token_endpoint_auth_method",
        "grant_types",
        "response_types",
        "scope",
    }
    assert body["redirect_uris"] == [CALLBACK]
    assert body["grant_types"] == ["authorization_code"]
    assert body["scope"] == "mcp"
    (client_type,) = server.sql(
        "SELECT client_type FROM oauthapp_application WHERE client_id = ?", (body["client_id"],)
    )[0]
    assert client_type == "public"


def test_registration_shows_a_confidential_client_its_secret_once_and_stores_it_hashed(
    server: LiveServer,
) -> None:
    body = register(
        server.url,
        {
            "redirect_uris": [CALLBACK],
            "token_endpoint_auth_method": "client_secret_post",
            "client_name": "Confidential",
            "client_uri": "https://client.example",
            "scope": "openid mcp profile",
            "logo_uri": None,
            "contacts": None,
        },
    ).json()
    assert None not in body.values()
    assert body["client_secret"] and body["client_secret_expires_at"] == 0
    assert body["client_uri"] == "https://client.example"
    assert body["scope"] == "mcp"
    assert "logo_uri" not in body and "contacts" not in body
    (stored,) = server.sql(
        "SELECT client_secret FROM oauthapp_application WHERE client_id = ?", (body["client_id"],)
    )[0]
    assert stored.startswith("client_secret_sha256$")
    assert body["client_secret"] not in stored
    # The secret works: client_secret_post at the token endpoint authenticates (a bad code follows).
    answer = httpx.post(
        f"{server.url}/token",
        data={
            "grant_type": "authorization_code",
            "code": "nope",
            "redirect_uri": CALLBACK,
            "code_verifier": "x" * 43,
            "client_id": body["client_id"],
            "client_secret": body["client_secret"],
        },
    )
    assert answer.json()["error"] == "invalid_grant"


def test_it_limits_registrations_per_client_address(tmp_path: Path) -> None:
    # A public PUBLIC_URL: on a loopback (development) one, loopback callers get a higher limit.
    limited = prepare_server(
        tmp_path, REGISTRATION_RATE_LIMIT="3", PUBLIC_URL="https://mcp.example.test"
    ).start()
    try:
        body = {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}
        for _ in range(3):
            assert register(limited.url, body).status_code == 201
        refused = register(limited.url, body)
        assert_refused(refused, "invalid_request", status=429)
        assert refused.headers["retry-after"] == "3600"
        assert limited.sql("SELECT COUNT(*) FROM oauthapp_application")[0][0] == 3
    finally:
        limited.stop()


# --- Authorization endpoint ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(server: LiveServer) -> OAuthClient:
    return OAuthClient.register(server.url)


def grant_count(server: LiveServer, client: OAuthClient) -> int:
    return server.sql(
        "SELECT COUNT(*) FROM oauth2_provider_grant g JOIN oauthapp_application a ON a.id = g.application_id "
        "WHERE a.client_id = ?",
        (client.client_id,),
    )[0][0]


def assert_error_page(response: httpx.Response, error: str) -> None:
    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    assert "This authorization request cannot continue" in response.text
    assert error in response.text


def assert_error_redirect(response: httpx.Response, client: OAuthClient, error: str, state: str) -> dict:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(client.redirect_uri + "?")
    query = query_of(location)
    assert query["error"] == error
    assert query["state"] == state
    assert query["iss"] == client.base_url
    assert "code" not in query
    return query


def test_it_shows_an_unknown_client_id_on_its_own_page_and_never_redirects(
    server: LiveServer, alice_browser: Browser, client: OAuthClient
) -> None:
    params = client.authorize_params(pkce_pair()[1], client_id="no-such-client")
    for browser in (Browser(server.url), alice_browser):  # before and after login
        assert_error_page(browser.http.get("/authorize", params=params), "Invalid client_id parameter value")


def test_it_shows_an_unregistered_redirect_uri_on_its_own_page_and_never_redirects(
    server: LiveServer, alice_browser: Browser, client: OAuthClient
) -> None:
    for uri in ("https://evil.example/callback", "http://localhost:33418/other", "javascript:alert(1)"):
        params = client.authorize_params(pkce_pair()[1], redirect_uri=uri)
        for browser in (Browser(server.url), alice_browser):
            assert_error_page(browser.http.get("/authorize", params=params), "Mismatching redirect URI")
    assert grant_count(server, client) == 0


def test_it_rejects_an_authorization_request_without_pkce(
    server: LiveServer, alice_browser: Browser, client: OAuthClient
) -> None:
    params = client.authorize_params("")
    del params["code_challenge"], params["code_challenge_method"]
    response = alice_browser.http.get("/authorize", params=params)
    query = assert_error_redirect(response, client, "invalid_request", params["state"])
    assert "challenge" in query["error_description"].lower()
    assert grant_count(server, client) == 0


@pytest.mark.parametrize("method", ["plain", None, "S512"], ids=["plain", "omitted", "unknown"])
def test_it_rejects_pkce_methods_other_than_s256_before_asking_anyone(
    server: LiveServer, alice_browser: Browser, client: OAuthClient, method: str | None
) -> None:
    verifier, _challenge = pkce_pair()
    params = client.authorize_params(verifier, code_challenge_method=method or "")
    if method is None:
        del params["code_challenge_method"]  # RFC 7636: it then means plain
    for browser in (Browser(server.url), alice_browser):  # neither a login nor a consent page first
        response = browser.http.get("/authorize", params=params)
        assert_error_redirect(response, client, "invalid_request", params["state"])
    assert grant_count(server, client) == 0


def test_it_rejects_an_unknown_resource_at_authorize_with_invalid_target(
    server: LiveServer, alice_browser: Browser, client: OAuthClient
) -> None:
    for resource in ("https://evil.example/mcp", f"{server.url}/admin", "not a uri"):
        params = client.authorize_params(pkce_pair()[1], resource=resource)
        for browser in (Browser(server.url), alice_browser):
            response = browser.http.get("/authorize", params=params)
            assert_error_redirect(response, client, "invalid_target", params["state"])
    assert grant_count(server, client) == 0


def test_it_rejects_an_unknown_resource_smuggled_into_the_consent_form(
    server: LiveServer, bob_browser: Browser
) -> None:
    client = OAuthClient.register(server.url)
    params = client.authorize_params(pkce_pair()[1], resource=f"{server.url}/mcp")
    page = bob_browser.http.get("/authorize", params=params)
    form = {**hidden_fields(page.text), "allow": "Authorize", "resource": "https://evil.example/mcp"}
    response = bob_browser.http.post(f"/authorize?{httpx.QueryParams(params)}", data=form)
    assert_error_redirect(response, client, "invalid_target", params["state"])
    assert grant_count(server, client) == 0


def test_it_refuses_a_consent_post_without_csrf_token(server: LiveServer, bob_browser: Browser) -> None:
    client = OAuthClient.register(server.url)
    params = client.authorize_params(pkce_pair()[1])
    page = bob_browser.http.get("/authorize", params=params)
    assert page.status_code == 200
    form = {**hidden_fields(page.text), "allow": "Authorize"}
    del form["csrfmiddlewaretoken"]
    response = bob_browser.http.post(f"/authorize?{httpx.QueryParams(params)}", data=form)
    assert response.status_code == 403
    assert "location" not in response.headers
    assert grant_count(server, client) == 0
    assert server.sql(
        "SELECT COUNT(*) FROM oauthapp_consent c JOIN oauthapp_application a ON a.id = c.application_id "
        "WHERE a.client_id = ?",
        (client.client_id,),
    ) == [(0,)]


def test_deny_redirects_with_access_denied_state_and_iss(server: LiveServer, bob_browser: Browser) -> None:
    client = OAuthClient.register(server.url)
    query, _verifier = client.authorize(bob_browser, approve=False)
    assert query["error"] == "access_denied"
    assert query["iss"] == server.url
    assert query["state"]
    assert "code" not in query
    assert grant_count(server, client) == 0
    # Denying remembers nothing: the next request asks again.
    again = bob_browser.http.get("/authorize", params=client.authorize_params(pkce_pair()[1]))
    assert again.status_code == 200


def test_state_comes_back_exactly_on_success_and_on_error(
    server: LiveServer, alice_browser: Browser, client: OAuthClient
) -> None:
    state = "a b&c=d/é?#%20+"
    query, _verifier = client.authorize(alice_browser, state=state)
    assert query["state"] == state and query["code"]
    params = client.authorize_params(pkce_pair()[1], state=state, code_challenge_method="plain")
    assert_error_redirect(
        alice_browser.http.get("/authorize", params=params), client, "invalid_request", state
    )


# --- Token endpoint ------------------------------------------------------------------------------


def code_for(client: OAuthClient, browser: Browser, **extra: Any) -> tuple[str, str]:
    query, verifier = client.authorize(browser, **extra)
    assert query.get("code"), query
    return query["code"], verifier


def assert_no_token_for(server: LiveServer, client: OAuthClient) -> None:
    assert server.sql(
        "SELECT COUNT(*) FROM oauth2_provider_accesstoken t JOIN oauthapp_application a "
        "ON a.id = t.application_id WHERE a.client_id = ?",
        (client.client_id,),
    ) == [(0,)]


def test_it_rejects_a_wrong_code_verifier(server: LiveServer, alice_browser: Browser) -> None:
    client = OAuthClient.register(server.url)
    code, _verifier = code_for(client, alice_browser)
    token_refused(client.exchange(code, pkce_pair()[0]), "invalid_grant")
    token_refused(
        client.token(grant_type="authorization_code", code=code, redirect_uri=CALLBACK), "invalid_request"
    )
    assert_no_token_for(server, client)


def test_a_replayed_authorization_code_is_refused_and_revokes_the_tokens_it_minted(
    server: LiveServer, alice_browser: Browser, introspector: OAuthClient
) -> None:
    client = OAuthClient.register(server.url)
    code, verifier = code_for(client, alice_browser)
    first = client.exchange(code, verifier)
    assert first.status_code == 200
    tokens = first.json()
    assert introspect(introspector, tokens["access_token"])["active"] is True
    body = token_refused(client.exchange(code, verifier), "invalid_grant")
    assert "already used" in body["error_description"]
    assert grant_count(server, client) == 0
    # RFC 6749 section 4.1.2: a replay means the code leaked; what it minted dies.
    assert introspect(introspector, tokens["access_token"]) == {"active": False}
    token_refused(client.refresh(tokens["refresh_token"]), "invalid_grant")
    assert_no_token_for(server, client)
    assert server.sql(
        "SELECT COUNT(*) FROM oauthapp_oauthevent e JOIN oauthapp_application a ON a.id = e.application_id "
        "WHERE a.client_id = ? AND e.kind = 'code_replay'",
        (client.client_id,),
    ) == [(1,)]


def test_it_rejects_a_code_exchanged_by_another_client(server: LiveServer, alice_browser: Browser) -> None:
    issued_to = OAuthClient.register(server.url)
    thief = OAuthClient.register(server.url)
    code, verifier = code_for(issued_to, alice_browser)
    token_refused(thief.exchange(code, verifier), "invalid_grant")
    assert_no_token_for(server, thief)
    # The rightful client can still use it.
    assert issued_to.exchange(code, verifier).status_code == 200


def test_it_rejects_an_expired_authorization_code(server: LiveServer, alice_browser: Browser) -> None:
    client = OAuthClient.register(server.url)
    code, verifier = code_for(client, alice_browser)
    server.sql(
        "UPDATE oauth2_provider_grant SET expires = '2000-01-01 00:00:00' WHERE application_id = "
        "(SELECT id FROM oauthapp_application WHERE client_id = ?)",
        (client.client_id,),
    )
    token_refused(client.exchange(code, verifier), "invalid_grant")
    assert_no_token_for(server, client)


def test_it_rejects_an_unknown_resource_at_the_token_endpoint(
    server: LiveServer, alice_browser: Browser
) -> None:
    client = OAuthClient.register(server.url)
    code, verifier = code_for(client, alice_browser, resource=f"{server.url}/mcp")
    token_refused(client.exchange(code, verifier, resource="https://evil.example/mcp"), "invalid_target")
    assert_no_token_for(server, client)


def test_it_rejects_a_mismatched_redirect_uri_at_the_token_endpoint(
    server: LiveServer, alice_browser: Browser
) -> None:
    client = OAuthClient.register(server.url)
    code, verifier = code_for(client, alice_browser)
    response = client.token(
        grant_type="authorization_code",
        code=code,
        redirect_uri="http://localhost:1/x",
        code_verifier=verifier,
    )
    assert response.status_code in (400, 401)
    assert response.json()["error"] in ("invalid_grant", "invalid_request")
    assert_no_token_for(server, client)


def test_it_rejects_unknown_clients_and_grant_types_as_json(server: LiveServer) -> None:
    unknown = httpx.post(
        f"{server.url}/token",
        data={
            "grant_type": "authorization_code",
            "code": "x",
            "client_id": "nobody",
            "code_verifier": "x" * 43,
        },
    )
    assert unknown.status_code == 401
    assert unknown.json()["error"] == "invalid_client"
    client = OAuthClient.register(server.url)
    # The password grant is gone (RFC 9700), even with the right password: not offered at all.
    token_refused(
        client.token(grant_type="password", username="alice", password="alice-password-123"),
        "unsupported_grant_type",
    )
    token_refused(client.token(grant_type="nonsense"), "unsupported_grant_type")


# --- Disabled clients ----------------------------------------------------------------------------


def application_pk(server: LiveServer, client: OAuthClient) -> int:
    return server.sql("SELECT id FROM oauthapp_application WHERE client_id = ?", (client.client_id,))[0][0]


def test_a_disabled_client_can_neither_authorize_nor_get_tokens_and_its_tokens_die(
    server: LiveServer, alice_browser: Browser, operator_browser: Browser, introspector: OAuthClient
) -> None:
    client = OAuthClient.register(server.url)
    code, verifier = code_for(client, alice_browser)
    tokens = client.exchange(code, verifier).json()
    pending_code, pending_verifier = code_for(client, alice_browser)
    assert introspect(introspector, tokens["access_token"])["active"] is True

    admin_action(
        operator_browser, "/admin/oauthapp/application/", "disable_clients", application_pk(server, client)
    )

    assert server.sql(
        "SELECT disabled_at IS NOT NULL FROM oauthapp_application WHERE client_id = ?", (client.client_id,)
    ) == [(1,)]
    assert introspect(introspector, tokens["access_token"]) == {"active": False}
    token_refused(client.refresh(tokens["refresh_token"]), "invalid_client", status=401)
    token_refused(client.exchange(pending_code, pending_verifier), "invalid_client", status=401)
    for browser in (alice_browser, Browser(server.url)):
        page = browser.http.get("/authorize", params=client.authorize_params(pkce_pair()[1]))
        assert_error_page(page, "Invalid client_id parameter value")
    assert_no_token_for(server, client)
