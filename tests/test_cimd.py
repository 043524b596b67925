"""Client ID Metadata Documents against live servers: documents served on 127.0.0.1 by the test.

`cimd_server` runs with CIMD_ALLOW_LOOPBACK, which only a development server may have (DEBUG=true,
on a loopback PUBLIC_URL), and trusts the test's CA (SSL_CERT_FILE), so its https fetches of our
documents go through the real TLS check; a 1-second fetch timeout and a 1-second minimum cache
age keep the slow and refetch cases short.
The shared `server` has the defaults: CIMD on, loopback documents refused.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.support.documents import DocumentsCA, DocumentServer, make_test_ca
from tests.support.live import (
    ALICE,
    OPERATOR,
    ROOT,
    TEST_SECRET_KEY,
    LiveServer,
    create_users,
    prepare_server,
)
from tests.support.mcp_http import MCPHttp
from tests.support.oauth import (
    Browser,
    OAuthClient,
    admin_action,
    csrf_from,
    hidden_fields,
    pkce_pair,
    query_of,
)
from tests.support.sdk_client import CALLBACK as SDK_CALLBACK
from tests.support.sdk_client import MemoryStorage, Person, call_tool

DOC_CALLBACK = "http://localhost:33420/callback"
CLIENTS = "/admin/oauthapp/application/"


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> DocumentsCA:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def https_docs(test_ca: DocumentsCA) -> Iterator[DocumentServer]:
    docs = DocumentServer(tls=test_ca).start()
    yield docs
    docs.stop()


@pytest.fixture(scope="module")
def http_docs() -> Iterator[DocumentServer]:
    docs = DocumentServer().start()
    yield docs
    docs.stop()


@pytest.fixture(scope="module")
def cimd_server(tmp_path_factory: pytest.TempPathFactory, test_ca: DocumentsCA) -> Iterator[LiveServer]:
    server = prepare_server(
        tmp_path_factory.mktemp("cimd"),
        DEBUG="true",
        CIMD_ALLOW_LOOPBACK="true",
        CIMD_FETCH_TIMEOUT_SECONDS="1",
        CIMD_CACHE_MIN_SECONDS="1",
        SSL_CERT_FILE=str(test_ca.ca_file),
    )
    create_users(server.env, (*ALICE, {}), (*OPERATOR, {"is_staff": True, "is_superuser": True}))
    server.start()
    yield server
    server.stop()
    # Refusals are logged as warnings; none of them may surface as a traceback.
    assert "Traceback" not in server.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def cimd_alice(cimd_server: LiveServer) -> Iterator[Browser]:
    browser = Browser(cimd_server.url)
    assert browser.login(*ALICE).status_code == 302
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def cimd_operator(cimd_server: LiveServer) -> Iterator[Browser]:
    browser = Browser(cimd_server.url)
    assert browser.login(*OPERATOR).status_code == 302
    yield browser
    browser.close()


def document_client(url: str, redirect_uri: str = DOC_CALLBACK) -> OAuthClient:
    """A client whose client_id is its document's URL (nothing is registered)."""
    return OAuthClient(base_url="", client_id=url, redirect_uri=redirect_uri)


def authorize_page(browser: Browser, client_id: str, redirect_uri: str = DOC_CALLBACK) -> httpx.Response:
    params = OAuthClient(base_url="", client_id=client_id, redirect_uri=redirect_uri).authorize_params(
        pkce_pair()[1]
    )
    return browser.http.get("/authorize", params=params)


def application_row(server: LiveServer, client_id: str) -> tuple[Any, ...] | None:
    rows = server.sql(
        "SELECT registration_source, client_type, redirect_uris, name FROM oauthapp_application "
        "WHERE client_id = ?",
        (client_id,),
    )
    return rows[0] if rows else None


def unique(path: str) -> str:
    return f"/{secrets.token_hex(4)}{path}"


# --- Discovery ---------------------------------------------------------------------------------


def test_the_metadata_advertises_metadata_documents_and_public_clients_by_default(server: LiveServer) -> None:
    meta = httpx.get(f"{server.url}/.well-known/oauth-authorization-server").json()
    # What Claude.ai and Claude Code look for before they use CIMD.
    assert meta["client_id_metadata_document_supported"] is True
    assert "none" in meta["token_endpoint_auth_methods_supported"]


# --- Whole flows -------------------------------------------------------------------------------


def test_the_sdk_client_logs_in_with_its_metadata_document_and_adds_23_and_19(
    cimd_server: LiveServer, https_docs: DocumentServer
) -> None:
    path = unique("/sdk-client.json")
    url = https_docs.document(path, client_name="SDK by document", redirect_uris=[SDK_CALLBACK])
    storage = MemoryStorage()
    # A browser nobody has logged in with: alice goes through our login form and consent page.
    browser = Browser(cimd_server.url)
    alice = Person(browser, credentials=ALICE)

    result, tools = anyio.run(
        lambda: call_tool(
            f"{cimd_server.url}/mcp",
            browser,
            "add",
            {"a": 23, "b": 19},
            storage=storage,
            client_metadata_url=url,
            person=alice,
        )
    )
    browser.close()

    assert result.is_error is False
    assert [c.text for c in result.content] == ["42"]
    assert "add" in tools
    assert alice.seen == ["login", "consent"]
    # The SDK used the URL as its client_id and registered nothing.
    assert storage.client is not None and storage.client.client_id == url
    assert application_row(cimd_server, url) == ("cimd", "public", SDK_CALLBACK, "SDK by document")
    assert https_docs.hits[path] == 1
    (count,) = cimd_server.sql(
        "SELECT COUNT(*) FROM oauth2_provider_accesstoken t JOIN oauthapp_application a "
        "ON a.id = t.application_id WHERE a.client_id = ?",
        (url,),
    )[0]
    assert count == 1


def test_a_loopback_http_document_goes_through_login_consent_token_and_mcp(
    cimd_server: LiveServer, http_docs: DocumentServer
) -> None:
    path = unique("/client.json")
    url = http_docs.document(path, client_name="Local dev client")
    client = document_client(url)
    client.base_url = cimd_server.url
    browser = Browser(cimd_server.url)
    verifier, challenge = pkce_pair()
    params = client.authorize_params(challenge)

    first = browser.http.get("/authorize", params=params)
    assert first.status_code == 302 and first.headers["location"].startswith("/login?next=")
    login = browser.login(*ALICE, next_url=query_of(first.headers["location"])["next"])
    assert login.status_code == 302 and login.headers["location"].startswith("/authorize?")
    consent = browser.http.get(login.headers["location"])
    assert consent.status_code == 200
    assert "Authorize Local dev client?" in consent.text
    # The consent page names the document's host and warns that the redirect stays on this machine.
    assert f"<code>{url.split('/')[2]}</code>" in consent.text
    assert 'id="local-redirect-warning"' in consent.text
    form = hidden_fields(consent.text)
    form["allow"] = "Authorize"
    approved = browser.http.post(f"/authorize?{httpx.QueryParams(params)}", data=form)
    assert approved.status_code == 302 and approved.headers["location"].startswith(DOC_CALLBACK)
    callback = query_of(approved.headers["location"])
    assert callback["state"] == params["state"] and callback["iss"] == cimd_server.url

    token = client.exchange(callback["code"], verifier)
    assert token.status_code == 200, token.text
    tokens = token.json()
    refreshed = client.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text

    mcp = MCPHttp(cimd_server.url, refreshed.json()["access_token"])
    mcp.initialize()
    assert mcp.call("add", {"a": 23, "b": 19})["result"]["content"][0]["text"] == "42"
    mcp.close()

    # Connected apps lists it by its URL, and revoking it works although the id has slashes.
    apps = browser.http.get("/account/apps")
    assert apps.status_code == 200 and url in apps.text
    revoked = browser.http.post(
        f"/account/apps/{url}/revoke", data={"csrfmiddlewaretoken": csrf_from(apps.text)}
    )
    assert revoked.status_code == 302
    assert client.refresh(refreshed.json()["refresh_token"]).status_code == 400
    browser.close()


CHATGPT_ID = "b3a1c0ffee"


def test_a_chatgpt_shaped_document_is_accepted_as_a_public_client(
    cimd_server: LiveServer, cimd_alice: Browser, https_docs: DocumentServer
) -> None:
    path = f"/oauth/{CHATGPT_ID}-{secrets.token_hex(3)}/client.json"
    url = https_docs.url(path)
    redirect_uri = f"https://chatgpt.com/connector/oauth/{CHATGPT_ID}"
    # DESIGN.md's copy of ChatGPT's published document, at our URL.
    https_docs.put(
        path,
        {
            "client_id": url,
            "client_uri": "https://chatgpt.com/",
            "redirect_uris": [redirect_uri],
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "client_name": "ChatGPT",
            "token_endpoint_auth_signing_alg": "RS256",
            "jwks_uri": "https://chatgpt.com/oauth/jwks.json",
        },
    )
    client = document_client(url, redirect_uri)
    client.base_url = cimd_server.url
    verifier, challenge = pkce_pair()
    params = client.authorize_params(challenge)
    consent = cimd_alice.http.get("/authorize", params=params)
    assert consent.status_code == 200, consent.text
    assert "Authorize ChatGPT?" in consent.text
    assert "<code>chatgpt.com</code>" in consent.text  # the redirect host
    assert 'id="client-host"' in consent.text
    assert 'id="local-redirect-warning"' not in consent.text  # a website, not this machine
    form = hidden_fields(consent.text)
    form["allow"] = "Authorize"
    approved = cimd_alice.http.post(f"/authorize?{httpx.QueryParams(params)}", data=form)
    assert approved.status_code == 302
    assert approved.headers["location"].startswith(f"{redirect_uri}?")
    token = client.exchange(query_of(approved.headers["location"])["code"], verifier)
    assert token.status_code == 200, token.text
    assert token.json()["scope"] == "mcp"
    assert application_row(cimd_server, url) == ("cimd", "public", redirect_uri, "ChatGPT")


# --- Refusals: each with its reason on the page, never a 500, nothing stored ---------------------


def big_document(url: str) -> dict[str, Any]:
    return {
        "client_id": url,
        "redirect_uris": [DOC_CALLBACK],
        "token_endpoint_auth_method": "none",
        "padding": "x" * 20_000,
    }


REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "mismatched-client-id": (
        {"client_id": "https://127.0.0.1:1/someone-else.json"},
        "names a different client_id than the URL it was fetched from",
    ),
    "no-supported-auth-method": (
        {
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        },
        "it authenticates with private_key_jwt, and this server accepts metadata-document clients only as "
        "public clients",
    ),
    "secret-auth-method": ({"token_endpoint_auth_method": "client_secret_basic"}, "client_secret_basic"),
    "dangerous-redirect": (
        {"redirect_uris": ["javascript:alert(1)"]},
        "the javascript scheme is never allowed",
    ),
    "http-redirect-off-loopback": (
        {"redirect_uris": ["http://example.com/cb"]},
        "http redirect URIs are allowed only",
    ),
    "no-redirects": ({"redirect_uris": []}, "lists no redirect_uris"),
    "implicit-grant": ({"grant_types": ["implicit"]}, "grant_types must be authorization_code"),
}


@pytest.mark.parametrize(("fields", "reason"), REFUSALS.values(), ids=REFUSALS.keys())
def test_it_refuses_a_document_outside_the_policy_and_says_why(
    cimd_server: LiveServer,
    cimd_alice: Browser,
    https_docs: DocumentServer,
    fields: dict[str, Any],
    reason: str,
) -> None:
    path = unique("/client.json")
    url = https_docs.document(path, **fields)
    assert_refused_with(cimd_server, cimd_alice, url, reason)
    assert https_docs.hits[path] == 1


def test_a_document_the_toolkit_cannot_store_is_refused_for_good_and_says_why(
    cimd_server: LiveServer, cimd_alice: Browser, https_docs: DocumentServer
) -> None:
    # A valid document, but its URL (the client_id) is longer than a client_id column holds:
    # the toolkit refuses it after our fetcher returned, which is no reason to "try again".
    path = unique(f"/{'x' * 260}.json")
    url = https_docs.document(path)
    reason = "this server cannot accept the client it describes (client_id: Ensure this value has at most 255"
    assert_refused_with(cimd_server, cimd_alice, url, reason)
    assert_refused_with(cimd_server, cimd_alice, url, reason)
    assert https_docs.hits[path] == 1
    events = cimd_server.sql("SELECT detail FROM oauthapp_oauthevent WHERE kind = 'cimd_fetch_failed'")
    assert any("at most 255 characters" in json.loads(detail)["reason"] for (detail,) in events)


def assert_refused_with(server: LiveServer, browser: Browser, url: str, reason: str) -> None:
    page = authorize_page(browser, url)
    assert page.status_code == 400, page.text
    assert "This authorization request cannot continue" in page.text
    assert "invalid_request" in page.text
    problem = page.text[page.text.index('id="client-problem"') :]
    assert reason.replace('"', "&quot;") in problem[:1000], problem[:1000]
    assert application_row(server, url) is None


FETCH_REFUSALS: dict[str, tuple[bytes | dict[str, Any] | None, dict[str, Any], str]] = {
    # body (None: a valid document for its URL), route options, reason shown
    "oversized": (None, {}, "exceeds the maximum allowed size"),
    "slow": (None, {"delay": 3.0}, "did not arrive within 1 second"),
    # Headers at once, then the body a byte every 0.1 s: each read is quick, the whole takes ~15 s.
    "slow-drip": (None, {"drip": 0.1}, "did not arrive within 1 second"),
    "not-json-content-type": (b"<html>hello</html>", {"content_type": "text/html"}, "is not JSON"),
    "not-json-body": (b"{not json", {}, "is not valid JSON"),
    "json-not-an-object": (b'["a list"]', {}, "must be a JSON object"),
    "http-error": (b'{"error": "gone"}', {"status": 404}, "returned HTTP 404"),
}


@pytest.mark.parametrize(("body", "route", "reason"), FETCH_REFUSALS.values(), ids=FETCH_REFUSALS.keys())
def test_it_refuses_a_document_it_cannot_use_and_says_why(
    cimd_server: LiveServer,
    cimd_alice: Browser,
    https_docs: DocumentServer,
    body: bytes | dict[str, Any] | None,
    route: dict[str, Any],
    reason: str,
) -> None:
    path = unique("/client.json")
    url = https_docs.url(path)
    slow = "delay" in route or "drip" in route
    if body is None:
        body = {"client_id": url, "redirect_uris": [DOC_CALLBACK]} if slow else big_document(url)
    https_docs.put(path, body, **route)
    started = time.monotonic()
    assert_refused_with(cimd_server, cimd_alice, url, reason)
    if slow:
        # CIMD_FETCH_TIMEOUT_SECONDS is 1 here: the page must not wait for the document much longer.
        assert time.monotonic() - started < 5
    # The toolkit backs off after a failure: a retry is answered from memory, with the same reason.
    assert_refused_with(cimd_server, cimd_alice, url, reason)
    assert https_docs.hits[path] == 1
    assert "CIMD document refused" in cimd_server.log_path.read_text(errors="replace")
    # Operators read it in the OAuth event log, by the document's URL.
    events = cimd_server.sql(
        "SELECT detail FROM oauthapp_oauthevent WHERE kind = 'cimd_fetch_failed' AND client_name = ?", (url,)
    )
    assert len(events) >= 1 and json.loads(events[0][0])["reason"]


def test_a_loopback_http_document_trickled_past_the_time_limit_is_refused_in_time(
    cimd_server: LiveServer, cimd_alice: Browser, http_docs: DocumentServer
) -> None:
    path = unique("/client.json")
    url = http_docs.url(path)
    http_docs.put(path, {"client_id": url, "redirect_uris": [DOC_CALLBACK]}, drip=0.1)
    started = time.monotonic()
    assert_refused_with(cimd_server, cimd_alice, url, "did not arrive within 1 second")
    assert time.monotonic() - started < 5


def test_it_refuses_an_http_document_url_off_loopback_without_fetching(
    cimd_server: LiveServer, cimd_alice: Browser
) -> None:
    assert_refused_with(
        cimd_server, cimd_alice, "http://example.com/client.json", "A client_id URL must use https."
    )


def test_without_the_loopback_allowance_it_never_fetches_from_this_machine(
    server: LiveServer, alice_browser: Browser, https_docs: DocumentServer, http_docs: DocumentServer
) -> None:
    https_path, http_path = unique("/client.json"), unique("/client.json")
    https_url = https_docs.document(https_path)
    http_url = http_docs.document(http_path)
    # The toolkit's SSRF guard: 127.0.0.1 is not a public address.
    assert_refused_with(server, alice_browser, https_url, "could not be fetched")
    assert_refused_with(
        server, alice_browser, http_url, "only when its operator allows it (CIMD_ALLOW_LOOPBACK)"
    )
    assert https_docs.hits[https_path] == 0 and http_docs.hits[http_path] == 0


def test_a_redirect_uri_the_document_does_not_list_is_refused(
    cimd_server: LiveServer, cimd_alice: Browser, https_docs: DocumentServer
) -> None:
    url = https_docs.document(unique("/client.json"))
    page = authorize_page(cimd_alice, url, redirect_uri="http://localhost:33420/elsewhere")
    assert page.status_code == 400, page.text
    assert "is not one of the redirect_uris in the application&#x27;s metadata document" in page.text
    # The document itself was fine: the client is known, with the document's redirect only.
    assert application_row(cimd_server, url) == ("cimd", "public", DOC_CALLBACK, "Document client")


# --- Caching -----------------------------------------------------------------------------------


def test_the_document_is_cached_for_its_max_age(
    cimd_server: LiveServer, cimd_alice: Browser, https_docs: DocumentServer
) -> None:
    path = unique("/client.json")
    url = https_docs.document(path, cache_control="max-age=3600")
    assert authorize_page(cimd_alice, url).status_code == 200
    https_docs.document(path, redirect_uris=["http://localhost:33420/new"], cache_control="max-age=3600")

    # Within its max-age the stored copy is used: the old redirect works, the new one does not yet.
    assert authorize_page(cimd_alice, url).status_code == 200
    assert authorize_page(cimd_alice, url, redirect_uri="http://localhost:33420/new").status_code == 400
    assert https_docs.hits[path] == 1


def test_a_stale_document_is_refetched_and_a_failed_refetch_keeps_the_last_good_copy(
    cimd_server: LiveServer, cimd_alice: Browser, https_docs: DocumentServer
) -> None:
    path = unique("/client.json")
    new_redirect = "http://localhost:33420/new"
    url = https_docs.document(path, cache_control="max-age=1")
    assert authorize_page(cimd_alice, url).status_code == 200

    https_docs.document(path, redirect_uris=[new_redirect], cache_control="max-age=1")
    time.sleep(1.5)  # past the document's max-age (the server's floor is 1 s here)
    assert authorize_page(cimd_alice, url, redirect_uri=new_redirect).status_code == 200
    assert https_docs.hits[path] == 2
    assert application_row(cimd_server, url) == ("cimd", "public", new_redirect, "Document client")

    https_docs.put(path, b"temporarily broken", status=500, content_type="text/plain")
    time.sleep(1.5)
    page = authorize_page(cimd_alice, url, redirect_uri=new_redirect)
    assert page.status_code == 200, page.text  # the last good copy
    assert https_docs.hits[path] == 3
    assert application_row(cimd_server, url) == ("cimd", "public", new_redirect, "Document client")


# --- Operators ---------------------------------------------------------------------------------


def test_operators_see_document_clients_in_admin_and_can_disable_them(
    cimd_server: LiveServer, cimd_alice: Browser, cimd_operator: Browser, https_docs: DocumentServer
) -> None:
    url = https_docs.document(unique("/client.json"), client_name="Admin-visible client")
    assert authorize_page(cimd_alice, url).status_code == 200
    (pk,) = cimd_server.sql("SELECT id FROM oauthapp_application WHERE client_id = ?", (url,))[0]

    listing = cimd_operator.http.get(CLIENTS, params={"registration_source__exact": "cimd"})
    assert listing.status_code == 200
    assert url in listing.text and "Admin-visible client" in listing.text
    detail = cimd_operator.http.get(f"{CLIENTS}{pk}/change/")
    assert detail.status_code == 200
    assert "Document last fetched" in detail.text
    # What the document says cannot be edited here (the next fetch would overwrite it).
    assert 'name="redirect_uris"' not in detail.text

    admin_action(cimd_operator, CLIENTS, "disable_clients", pk)
    page = authorize_page(cimd_alice, url)
    assert page.status_code == 400
    assert "The server&#x27;s operator has disabled this application." in page.text


# --- Start-up ----------------------------------------------------------------------------------


def settings_check(**env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "DOTENV_PATH": "/nonexistent/.env",
        "SECRET_KEY": TEST_SECRET_KEY,
        "DEBUG": "false",
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_loopback_documents_are_refused_at_start_up_unless_debug_is_on() -> None:
    # DEBUG=false is a server others reach: it never fetches from its own machine.
    refused = settings_check(PUBLIC_URL="http://127.0.0.1:8787", CIMD_ALLOW_LOOPBACK="true")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        "Configuration error: CIMD_ALLOW_LOOPBACK=true is for local development only; "
        "it needs DEBUG=true (and so a loopback PUBLIC_URL)."
    ]
    public = settings_check(PUBLIC_URL="https://mcp.example.com", CIMD_ALLOW_LOOPBACK="true")
    assert public.returncode != 0
    assert "CIMD_ALLOW_LOOPBACK=true is for local development only" in public.stderr
    allowed = settings_check(PUBLIC_URL="http://127.0.0.1:8787", CIMD_ALLOW_LOOPBACK="true", DEBUG="true")
    assert allowed.returncode == 0, allowed.stderr


def test_the_document_policy_keeps_chatgpts_document_intact_but_public() -> None:
    from oauthapp.cimd import document_normalise

    url = "https://chatgpt.com/oauth/x/client.json"
    document = {
        "client_id": url,
        "redirect_uris": ["https://chatgpt.com/connector/oauth/x"],
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "jwks_uri": "https://chatgpt.com/oauth/jwks.json",
    }
    normalised = document_normalise(client_id=url, metadata=json.loads(json.dumps(document)))
    assert normalised == {**document, "token_endpoint_auth_method": "none"}
