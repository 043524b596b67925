"""The MCP request path's guarantees, pinned over HTTP on a live worker.

Front door (Host, Origin, CORS, preflight), the token check ending on every path that ends a
token, the audit record of each call, and resumption of a dropped stream from the event store.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.flows import expire_refresh_grace
from tests.support.forms import form_fields
from tests.support.live import LiveServer, create_user, prepare_server
from tests.support.mcp_http import ACCEPT, MCPHttp, initialize_body, raw_events, resume, resume_messages
from tests.support.oauth import Browser, OAuthClient, admin_action, csrf_from, obtain_token


def new_user(server: LiveServer) -> tuple[str, str]:
    username = f"user{uuid.uuid4().hex[:8]}"
    password = f"{username}-password-123"
    create_user(server.env, username, password)
    return username, password


def logged_in(server: LiveServer, credentials: tuple[str, str]) -> Browser:
    browser = Browser(server.url)
    assert browser.login(*credentials).status_code == 302
    return browser


def eventually(check: Any, *, seconds: float = 10, every: float = 0.1) -> Any:
    """Poll `check()` until it returns something truthy (the audit is written in batches)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


# --- The front door: Host, Origin, CORS, preflight ----------------------------------------------

# Every MCP path with every method it serves, each with a body that would be valid.
ROUTES = [
    ("GET", "/sse"),
    ("POST", "/sse/message?sessionId=" + "0" * 32),
    ("GET", "/mcp"),
    ("POST", "/mcp"),
    ("DELETE", "/mcp"),
]


def mcp_request(
    server: LiveServer, method: str, path: str, token: str | None, **headers: str
) -> httpx.Response:
    all_headers = {"Accept": ACCEPT, "Content-Type": "application/json", **headers}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    content = json.dumps(initialize_body()) if method == "POST" else None
    # A stream (GET /sse, GET /mcp) is read only up to its headers.
    with (
        httpx.Client(timeout=10) as http,
        http.stream(method, f"{server.url}{path}", content=content, headers=all_headers) as response,
    ):
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
        return response


@pytest.fixture
def alice_token(server: LiveServer, alice_browser: Browser) -> str:
    return obtain_token(server.url, alice_browser)["access_token"]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_it_refuses_a_foreign_host_on_every_path_and_method(
    server: LiveServer, alice_token: str, method: str, path: str
) -> None:
    response = mcp_request(server, method, path, alice_token, Host="evil.example")
    assert response.status_code == 421
    assert response.json()["error"]["code"] == -32600


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_it_refuses_a_foreign_origin_on_every_path_and_method(
    server: LiveServer, alice_token: str, method: str, path: str
) -> None:
    response = mcp_request(server, method, path, alice_token, Origin="https://evil.example")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == -32600
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("origin", ["http://localhost:6274", "http://127.0.0.1:6274", "PUBLIC_URL"])
def test_it_lets_loopback_and_its_own_origin_in_with_cors_headers(
    server: LiveServer, alice_token: str, origin: str
) -> None:
    origin = server.url if origin == "PUBLIC_URL" else origin
    response = mcp_request(server, "POST", "/mcp", alice_token, Origin=origin)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == origin
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"mcp-session-id", "www-authenticate", "mcp-protocol-version"} <= exposed
    assert "Origin" in response.headers["vary"]


def test_a_refusal_for_a_missing_token_carries_cors_headers(server: LiveServer) -> None:
    # A browser client must be able to read the 401's challenge to start the OAuth flow.
    response = mcp_request(server, "POST", "/mcp", None, Origin="http://localhost:6274")
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "http://localhost:6274"
    assert "www-authenticate" in response.headers["access-control-expose-headers"].lower()


@pytest.mark.parametrize("path", ["/sse", "/sse/message", "/mcp"])
def test_the_preflight_answers_without_a_token(server: LiveServer, path: str) -> None:
    response = httpx.options(
        f"{server.url}{path}",
        headers={
            "Origin": "http://localhost:6274",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, mcp-session-id",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "http://localhost:6274"
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "DELETE", "OPTIONS"} <= methods
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {
        "authorization",
        "content-type",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    } <= allowed
    assert int(response.headers["access-control-max-age"]) > 0


def test_the_preflight_refuses_a_foreign_origin(server: LiveServer) -> None:
    response = httpx.options(
        f"{server.url}/mcp",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


@pytest.fixture(scope="module")
def origins_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = prepare_server(
        tmp_path_factory.mktemp("origins"), MCP_ALLOWED_ORIGINS="https://app.example, https://other.example"
    )
    create_user(server.env, "olga", "olga-password-123")
    server.start()
    yield server
    server.stop()


def test_mcp_allowed_origins_lets_listed_browser_origins_in(origins_server: LiveServer) -> None:
    token = obtain_token(origins_server.url, logged_in(origins_server, ("olga", "olga-password-123")))
    for origin in ("https://app.example", "https://other.example"):
        response = mcp_request(origins_server, "POST", "/mcp", token["access_token"], Origin=origin)
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == origin
    refused = mcp_request(
        origins_server, "POST", "/mcp", token["access_token"], Origin="https://app.example.net"
    )
    assert refused.status_code == 403


# --- The token check ends on every path that ends a token ---------------------------------------


def assert_refused_now(server: LiveServer, client: MCPHttp) -> None:
    """The next request with the (already used, so cached) token is refused at once."""
    response = client.post({"jsonrpc": "2.0", "id": 99, "method": "tools/list"})
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def used_token(server: LiveServer, browser: Browser) -> tuple[dict[str, Any], MCPHttp]:
    issued = obtain_token(server.url, browser)
    client = MCPHttp(server.url, issued["access_token"])
    client.initialize()
    assert client.call("add", {"a": 1, "b": 2})["result"]["content"][0]["text"] == "3"
    return issued, client


def test_a_revoked_token_is_refused_at_once(server: LiveServer, alice_browser: Browser) -> None:
    issued, client = used_token(server, alice_browser)
    revoked = httpx.post(
        f"{server.url}/revoke",
        data={"token": issued["access_token"], "client_id": issued["client"].client_id},
    )
    assert revoked.status_code == 200
    assert_refused_now(server, client)


def test_a_family_revoked_for_refresh_reuse_is_refused_at_once(
    server: LiveServer, alice_browser: Browser
) -> None:
    issued = obtain_token(server.url, alice_browser)
    oauth: OAuthClient = issued["client"]
    rotated = oauth.refresh(issued["refresh_token"]).json()
    client = MCPHttp(server.url, rotated["access_token"])
    client.initialize()
    # The first refresh token again, after the grace period: a stolen token was replayed.
    expire_refresh_grace(server, oauth)
    replay = oauth.refresh(issued["refresh_token"])
    assert replay.status_code == 400
    assert_refused_now(server, client)


def test_a_client_disabled_in_admin_is_refused_at_once(
    server: LiveServer, alice_browser: Browser, operator_browser: Browser
) -> None:
    issued, client = used_token(server, alice_browser)
    (pk,) = server.sql(
        "SELECT id FROM oauthapp_application WHERE client_id = ?", (issued["client"].client_id,)
    )[0]
    admin_action(operator_browser, "/admin/oauthapp/application/", "disable_clients", pk)
    assert_refused_now(server, client)


def test_a_consent_revoked_by_the_user_is_refused_at_once(server: LiveServer, alice_browser: Browser) -> None:
    issued, client = used_token(server, alice_browser)
    page = alice_browser.http.get("/account/apps")
    revoke = alice_browser.http.post(
        f"/account/apps/{issued['client'].client_id}/revoke",
        data={"csrfmiddlewaretoken": csrf_from(page.text)},
    )
    assert revoke.status_code == 302
    assert_refused_now(server, client)


def test_a_user_deactivated_in_admin_is_refused_at_once(
    server: LiveServer, operator_browser: Browser
) -> None:
    username, password = new_user(server)
    browser = logged_in(server, (username, password))
    _issued, client = used_token(server, browser)
    (pk,) = server.sql("SELECT id FROM auth_user WHERE username = ?", (username,))[0]
    url = f"/admin/auth/user/{pk}/change/"
    page = operator_browser.http.get(url)
    fields: dict[str, list[str]] = {}
    for name, value in form_fields(page.text, "user_form"):
        if name != "is_active":
            fields.setdefault(name, []).append(value)
    saved = operator_browser.http.post(url, data=fields)
    assert saved.status_code == 302, saved.text[-2000:]
    assert server.sql("SELECT is_active FROM auth_user WHERE id = ?", (pk,))[0][0] in (0, False)
    assert_refused_now(server, client)


# --- Audit ----------------------------------------------------------------------------------------


def audit_rows(server: LiveServer, username: str) -> list[tuple[Any, ...]]:
    return server.sql(
        "SELECT t.tool, t.outcome, t.arguments_bytes, t.duration_ms, t.error, a.client_id "
        "FROM mcpapp_toolcall t JOIN auth_user u ON u.id = t.user_id "
        "LEFT JOIN oauthapp_application a ON a.id = t.application_id "
        "WHERE u.username = ? ORDER BY t.id",
        (username,),
    )


def test_every_call_is_audited_with_who_what_how_and_how_long(server: LiveServer) -> None:
    username, password = new_user(server)
    issued = obtain_token(server.url, logged_in(server, (username, password)))
    client = MCPHttp(server.url, issued["access_token"])
    client.initialize()
    arguments = {"a": 23, "b": 19}
    assert client.call("add", arguments)["result"]["content"][0]["text"] == "42"
    # A tool that fails with an error for the user: the user has no GitHub link.
    failed = client.call("github_user", {})["result"]
    assert failed["isError"] is True
    # Arguments the schema refuses.
    invalid = client.call("add", {"a": "x"})["result"]
    assert invalid["isError"] is True
    client.close()

    rows = eventually(lambda: len(audit_rows(server, username)) >= 3 and audit_rows(server, username))
    assert rows, "the calls were not audited"
    assert len(rows) == 3
    client_id = issued["client"].client_id
    ok, github, bad = rows
    assert ok[:3] == ("add", "ok", len(json.dumps(arguments)))
    assert ok[3] > 0 and ok[4] == "" and ok[5] == client_id
    assert github[:2] == ("github_user", "error") and github[5] == client_id
    assert "GitHub" in github[4]
    assert bad[:2] == ("add", "error") and bad[4]


# --- Resumption (Last-Event-ID) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = prepare_server(tmp_path_factory.mktemp("resume"), MCP_CONFORMANCE_FIXTURES="true")
    create_user(server.env, "rita", "rita-password-123")
    server.start()
    yield server
    server.stop()


def read_events(response: httpx.Response, count: int) -> list[tuple[str | None, dict[str, Any]]]:
    """The first `count` SSE events (id, payload) of a streamed response."""
    events: list[tuple[str | None, dict[str, Any]]] = []
    event_id: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "":
            if data and data[0]:
                events.append((event_id, json.loads("\n".join(data))))
                if len(events) >= count:
                    break
            event_id, data = None, []
    return events


def test_a_dropped_stream_resumes_from_last_event_id(fixture_server: LiveServer) -> None:
    token = obtain_token(fixture_server.url, logged_in(fixture_server, ("rita", "rita-password-123")))
    client = MCPHttp(fixture_server.url, token["access_token"])
    client.initialize()
    call = {
        "jsonrpc": "2.0",
        "id": 41,
        "method": "tools/call",
        "params": {"name": "test_tool_with_logging", "arguments": {}},
    }
    # Read the first log message of the call, then drop the connection.
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST", f"{fixture_server.url}/mcp", content=json.dumps(call), headers=client.headers()
        ) as response,
    ):
        assert response.status_code == 200
        ((first_id, first),) = read_events(response, 1)
    assert first["method"] == "notifications/message"
    assert first_id

    # Reconnect with Last-Event-ID: the rest of the call's messages, the result last.
    replayed = resume_messages(fixture_server.url, token["access_token"], client, first_id, 41)
    logs = [m["params"]["data"] for m in replayed if m.get("method") == "notifications/message"]
    assert logs == ["Tool processing data", "Tool execution completed"]
    assert replayed[-1]["result"]["content"][0]["text"] == "Tool with logging executed successfully"
    client.close()


def test_a_stream_the_server_closes_mid_call_primes_resumption_and_resumes(
    fixture_server: LiveServer,
) -> None:
    # SEP-1699 (2025-11-25): a POST stream starts with a priming event (an id, empty data and
    # the retry interval); a long call may close it and the client fetches the answer later.
    token = obtain_token(fixture_server.url, logged_in(fixture_server, ("rita", "rita-password-123")))
    client = MCPHttp(fixture_server.url, token["access_token"], version="2025-11-25")
    client.initialize()
    call = {
        "jsonrpc": "2.0",
        "id": 61,
        "method": "tools/call",
        "params": {"name": "test_reconnection", "arguments": {}},
    }
    with httpx.Client(timeout=30) as http:
        response = http.post(f"{fixture_server.url}/mcp", content=json.dumps(call), headers=client.headers())
    assert response.status_code == 200
    events = raw_events(response)
    priming = events[0]
    assert priming["id"] and priming.get("data", "") == ""
    assert priming["retry"] == "1000"
    # The stream was closed before the answer.
    assert not [e for e in events if '"id":61' in e.get("data", "").replace(" ", "")]
    answer = resume(fixture_server.url, token["access_token"], client, events[-1]["id"], 61)
    assert answer["result"]["content"][0]["text"] == "Reconnection test completed successfully"
    client.close()


def test_a_resumption_replays_only_its_own_sessions_events(fixture_server: LiveServer) -> None:
    # Two sessions use the same request id; one drops its stream and resumes while the other's
    # events for that id are stored. It must get its own answer, never the other session's.
    token = obtain_token(fixture_server.url, logged_in(fixture_server, ("rita", "rita-password-123")))
    mine, theirs = (
        MCPHttp(fixture_server.url, token["access_token"], version="2025-11-25") for _ in range(2)
    )
    mine.initialize()
    theirs.initialize()
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "test_reconnection", "arguments": {}},
    }
    with httpx.Client(timeout=30) as http:
        cut = http.post(f"{fixture_server.url}/mcp", content=json.dumps(call), headers=mine.headers())
        other = http.post(
            f"{fixture_server.url}/mcp",
            content=json.dumps({**call, "params": {"name": "test_tool_with_logging", "arguments": {}}}),
            headers=theirs.headers(),
        )
    assert cut.status_code == other.status_code == 200
    assert any("Tool with logging executed successfully" in e.get("data", "") for e in raw_events(other))
    replayed = resume_messages(fixture_server.url, token["access_token"], mine, raw_events(cut)[-1]["id"], 7)
    assert replayed[-1]["result"]["content"][0]["text"] == "Reconnection test completed successfully"
    assert not [m for m in replayed if m.get("method") == "notifications/message"]
    mine.close()
    theirs.close()
