"""Both MCP transports over real HTTP: auth refusals, protocol errors, sessions, tools."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.forms import admin_set_user_permissions
from tests.support.live import ALICE, LiveServer, create_users, manage, prepare_server
from tests.support.mcp_http import ACCEPT, MCPHttp, SSEStream, initialize_body, sse_messages
from tests.support.oauth import Browser, obtain_token


@pytest.fixture
def alice_token(server: LiveServer, alice_browser: Browser) -> str:
    return obtain_token(server.url, alice_browser)["access_token"]


@pytest.fixture
def bob_token(server: LiveServer, bob_browser: Browser) -> str:
    return obtain_token(server.url, bob_browser)["access_token"]


def make_token(server: LiveServer, *, username: str, scope: str, resource: list[str] | None = None) -> str:
    """A token as django-oauth-toolkit would store it (e.g. the DCR registration token)."""
    raw = secrets.token_urlsafe(32)
    code = (
        "from datetime import timedelta; from django.utils import timezone; "
        "from django.contrib.auth.models import User; "
        "from oauth2_provider.models import AccessToken, set_token_value; "
        "from oauthapp.models import Application; "
        "app = Application.objects.create(name='direct', client_type='public', "
        "authorization_grant_type='authorization-code', redirect_uris='https://example.com/cb'); "
        f"t = AccessToken(user=User.objects.get(username={username!r}), application=app, "
        f"expires=timezone.now() + timedelta(hours=1), scope={scope!r}, resource={resource or []!r}); "
        f"set_token_value(t, {raw!r}); t.save()"
    )
    manage(server.env, "shell", "-c", code)
    return raw


def post_mcp(server: LiveServer, body: Any, token: str | None, **headers: str) -> httpx.Response:
    all_headers = {"Accept": ACCEPT, "Content-Type": "application/json", **headers}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(f"{server.url}/mcp", content=raw, headers=all_headers, timeout=30)


# --- Token auth -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/sse", "/mcp"])
def test_it_asks_for_a_token_with_resource_metadata(server: LiveServer, path: str) -> None:
    response = httpx.request("GET" if path == "/sse" else "POST", f"{server.url}{path}")
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{server.url}/.well-known/oauth-protected-resource{path}"' in challenge
    # The scope a token needs, so a client asks for it (MCP 2025-11-25, RFC 6750 section 3).
    assert 'scope="mcp"' in challenge
    metadata = httpx.get(f"{server.url}/.well-known/oauth-protected-resource{path}").json()
    assert metadata["resource"] == f"{server.url}{path}"
    assert metadata["scopes_supported"] == ["mcp"]


def test_it_rejects_an_unknown_token(server: LiveServer) -> None:
    response = post_mcp(server, initialize_body(), "not-a-real-token")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.json()["error"] == "invalid_token"


def test_it_refuses_a_token_in_the_query_string(server: LiveServer, alice_token: str) -> None:
    response = httpx.get(f"{server.url}/sse?access_token={alice_token}", timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def open_endpoint(server_url: str, path: str, token: str) -> httpx.Response:
    """What a client first sends to `path`: initialize on /mcp, the stream's GET on /sse."""
    if path == "/sse":
        with httpx.stream(
            "GET", f"{server_url}/sse", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ) as response:
            if response.status_code != 200:  # an error body is short; a stream never ends
                response.read()
            return response
    return httpx.post(
        f"{server_url}/mcp",
        json=initialize_body(),
        headers={"Accept": ACCEPT, "Authorization": f"Bearer {token}"},
        timeout=30,
    )


@pytest.mark.parametrize("path", ["/sse", "/mcp"])
def test_it_forbids_a_token_without_the_mcp_scope(server: LiveServer, path: str) -> None:
    token = make_token(server, username="alice", scope="oauth2_provider:registration")
    response = open_endpoint(server.url, path, token)
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert 'scope="mcp"' in response.headers["www-authenticate"]
    assert response.json()["error"] == "insufficient_scope"


@pytest.fixture(scope="module")
def scoped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose operator requires two scopes of their own besides mcp (MCP_REQUIRED_SCOPES)."""
    scoped = prepare_server(tmp_path_factory.mktemp("scoped"), MCP_REQUIRED_SCOPES="mcp acme:read acme:write")
    create_users(scoped.env, (*ALICE, {}))
    scoped.start()
    yield scoped
    scoped.stop()


@pytest.mark.parametrize("path", ["/sse", "/mcp"])
def test_the_challenges_name_every_scope_the_operator_requires_and_every_one_missing(
    scoped_server: LiveServer, path: str
) -> None:
    url = scoped_server.url
    asked = httpx.request("GET" if path == "/sse" else "POST", f"{url}{path}")
    assert asked.status_code == 401
    assert 'scope="mcp acme:read acme:write"' in asked.headers["www-authenticate"]
    metadata = httpx.get(f"{url}/.well-known/oauth-protected-resource{path}").json()
    assert metadata["scopes_supported"] == ["mcp", "acme:read", "acme:write"]

    browser = Browser(url)
    assert browser.login(*ALICE).status_code == 302
    # A client that asks for mcp alone gets mcp alone, and a 403 naming both scopes it lacks.
    narrow = obtain_token(url, browser, scope="mcp")
    assert narrow["scope"] == "mcp"
    refused = open_endpoint(url, path, narrow["access_token"])
    assert refused.status_code == 403
    challenge = refused.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="acme:read acme:write"' in challenge
    assert refused.json() == {
        "error": "insufficient_scope",
        "error_description": "The access token lacks the scopes acme:read acme:write",
    }
    # Asking for what the challenge named (or for nothing we know: the defaults) is enough.
    for scope in ("mcp acme:read acme:write", "openid profile"):
        full = obtain_token(url, browser, scope=scope)
        assert set(full["scope"].split()) == {"mcp", "acme:read", "acme:write"}
        assert open_endpoint(url, path, full["access_token"]).status_code == 200
    browser.close()


def test_personal_tokens_carry_every_required_scope(scoped_server: LiveServer) -> None:
    token = manage(scoped_server.env, "create_personal_token", "alice", "--name", "scoped").strip()
    for path in ("/sse", "/mcp"):
        assert open_endpoint(scoped_server.url, path, token).status_code == 200


def test_it_rejects_a_token_bound_to_the_other_endpoint(server: LiveServer, alice_browser: Browser) -> None:
    token = obtain_token(server.url, alice_browser, resource=f"{server.url}/mcp")["access_token"]
    assert post_mcp(server, initialize_body(), token).status_code == 200
    response = httpx.get(f"{server.url}/sse", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    # It says why: the token is for the other endpoint.
    assert (
        f'error_description="The access token is for {server.url}/mcp, not {server.url}/sse"'
        in response.headers["www-authenticate"]
    )


def test_it_rejects_an_expired_token(server: LiveServer, alice_token: str) -> None:
    import hashlib

    checksum = hashlib.sha256(alice_token.encode()).hexdigest()
    server.sql(
        "UPDATE oauth2_provider_accesstoken SET expires = '2000-01-01 00:00:00' WHERE token_checksum = ?",
        (checksum,),
    )
    response = post_mcp(server, initialize_body(), alice_token)
    assert response.status_code == 401


def test_it_rejects_the_tokens_of_a_disabled_client(server: LiveServer, alice_browser: Browser) -> None:
    token = obtain_token(server.url, alice_browser)
    client_id = token["client"].client_id
    code = (
        "from oauthapp.models import Application; from oauthapp.services import application_disable; "
        f"application_disable(application=Application.objects.get(client_id={client_id!r}))"
    )
    manage(server.env, "shell", "-c", code)
    response = post_mcp(server, initialize_body(), token["access_token"])
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


# --- Streamable HTTP --------------------------------------------------------------------------


def test_streamable_http_session_lifecycle(server: LiveServer, alice_token: str) -> None:
    client = MCPHttp(server.url, alice_token)
    init = client.initialize()
    assert init.headers["content-type"].startswith("text/event-stream")
    assert sse_messages(init.text)[0]["result"]["protocolVersion"] == "2025-06-18"
    tools = client.request("tools/list")["result"]["tools"]
    assert {"add", "whoami"} <= {t["name"] for t in tools}
    assert client.call("add", {"a": 23, "b": 19})["result"]["content"][0]["text"] == "42"
    # JSON instead of SSE when the client accepts only JSON.
    plain = client.post(
        {"jsonrpc": "2.0", "id": 99, "method": "ping"},
        Accept="application/json",
    )
    assert plain.status_code in (200, 406)
    deleted = client.http.delete("/mcp", headers=client.headers())
    assert deleted.status_code == 200
    gone = client.post({"jsonrpc": "2.0", "id": 100, "method": "tools/list"})
    assert gone.status_code == 404
    client.close()


def test_it_requires_a_session_id_after_initialize(server: LiveServer, alice_token: str) -> None:
    response = post_mcp(server, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, alice_token)
    assert response.status_code == 400
    assert response.json()["error"]["code"] < 0


def test_it_answers_404_for_an_unknown_session(server: LiveServer, alice_token: str) -> None:
    response = post_mcp(
        server,
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        alice_token,
        **{"Mcp-Session-Id": "0" * 32, "MCP-Protocol-Version": "2025-06-18"},
    )
    assert response.status_code == 404


def test_it_rejects_an_unsupported_protocol_version(server: LiveServer, alice_token: str) -> None:
    client = MCPHttp(server.url, alice_token)
    client.initialize()
    response = client.post(
        {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}, **{"MCP-Protocol-Version": "1999-01-01"}
    )
    assert response.status_code == 400
    client.close()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("{not json", -32700),
        ('{"hello": "world"}', None),
        ("[]", None),
    ],
)
def test_it_answers_bad_messages_with_jsonrpc_errors(
    server: LiveServer, alice_token: str, body: str, code: int | None
) -> None:
    client = MCPHttp(server.url, alice_token)
    client.initialize()
    response = client.post(body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert isinstance(error["code"], int) and error["code"] < 0
    if code is not None:
        assert error["code"] == code
    client.close()


def test_it_answers_an_unknown_method_with_method_not_found(server: LiveServer, alice_token: str) -> None:
    client = MCPHttp(server.url, alice_token)
    client.initialize()
    answer = client.request("no/such/method")
    assert answer["error"]["code"] == -32601
    client.close()


def test_it_accepts_notifications_with_202(server: LiveServer, alice_token: str) -> None:
    client = MCPHttp(server.url, alice_token)
    client.initialize()
    response = client.post(
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 77}}
    )
    assert response.status_code == 202
    client.close()


def test_it_caps_the_request_body(server: LiveServer, alice_token: str) -> None:
    big = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * (4 * 1024 * 1024)}}
    )
    response = post_mcp(server, big, alice_token)
    assert response.status_code == 413
    assert response.json()["error"]["code"] < 0


@pytest.mark.parametrize("path", ["/sse", "/mcp"])
def test_it_refuses_a_foreign_origin(server: LiveServer, alice_token: str, path: str) -> None:
    response = httpx.request(
        "GET" if path == "/sse" else "POST",
        f"{server.url}{path}",
        headers={
            "Authorization": f"Bearer {alice_token}",
            "Origin": "https://evil.example",
            "Accept": ACCEPT,
        },
        json=initialize_body(),
        timeout=10,
    )
    assert response.status_code == 403


def test_it_refuses_a_foreign_host(server: LiveServer, alice_token: str) -> None:
    response = post_mcp(server, initialize_body(), alice_token, Host="evil.example")
    assert response.status_code == 421


def test_the_standalone_get_stream_opens(server: LiveServer, alice_token: str) -> None:
    client = MCPHttp(server.url, alice_token)
    client.initialize()
    stream = SSEStream(
        server.url,
        alice_token,
        path="/mcp",
        **{"Mcp-Session-Id": client.session_id or "", "MCP-Protocol-Version": "2025-06-18"},
    )
    assert stream.status == 200
    assert stream.response_headers["content-type"].startswith("text/event-stream")
    stream.close()
    client.close()


def test_another_users_token_cannot_use_a_session(
    server: LiveServer, alice_token: str, bob_token: str
) -> None:
    alice = MCPHttp(server.url, alice_token)
    alice.initialize()
    bob = MCPHttp(server.url, bob_token)
    bob.session_id = alice.session_id
    assert bob.post({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}).status_code == 404
    alice.close()
    bob.close()


def test_the_stateless_2026_protocol_works_without_a_session(server: LiveServer, alice_token: str) -> None:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 23, "b": 19}, "_meta": meta},
    }
    response = post_mcp(
        server,
        body,
        alice_token,
        **{"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "add"},
    )
    assert response.status_code == 200, response.text
    assert "mcp-session-id" not in response.headers
    payload = (
        response.json() if "json" in response.headers["content-type"] else sse_messages(response.text)[-1]
    )
    assert payload["result"]["content"][0]["text"] == "42"


# --- Legacy SSE -------------------------------------------------------------------------------


def test_post_to_sse_is_405_so_clients_fall_back(server: LiveServer, alice_token: str) -> None:
    response = post_mcp_path(server, "/sse", alice_token)
    assert response.status_code == 405


def post_mcp_path(server: LiveServer, path: str, token: str, body: Any = None) -> httpx.Response:
    return httpx.post(
        f"{server.url}{path}",
        content=json.dumps(body or initialize_body()),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": ACCEPT},
        timeout=10,
    )


def open_sse_session(server: LiveServer, token: str) -> tuple[SSEStream, str]:
    stream = SSEStream(server.url, token)
    assert stream.status == 200
    event = stream.next()
    assert event is not None and event[0] == "endpoint"
    assert event[1].startswith("/sse/message?sessionId=")
    return stream, event[1]


def test_sse_session_answers_on_the_stream(server: LiveServer, alice_token: str) -> None:
    stream, endpoint = open_sse_session(server, alice_token)
    assert post_mcp_path(server, endpoint, alice_token, initialize_body("2024-11-05")).status_code == 202
    assert stream.next_message()["result"]["protocolVersion"] == "2024-11-05"
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert post_mcp_path(server, endpoint, alice_token, initialized).status_code == 202
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 23, "b": 19}},
    }
    assert post_mcp_path(server, endpoint, alice_token, call).status_code == 202
    answer = stream.next_message()
    assert answer["id"] == 2
    assert answer["result"]["content"][0]["text"] == "42"
    stream.close()


def test_sse_message_errors(server: LiveServer, alice_token: str, bob_token: str) -> None:
    stream, endpoint = open_sse_session(server, alice_token)
    bad = httpx.post(
        f"{server.url}{endpoint}",
        content=b"{oops",
        headers={"Authorization": f"Bearer {alice_token}", "Content-Type": "application/json"},
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == -32700
    invalid = post_mcp_path(server, endpoint, alice_token, {"not": "jsonrpc"})
    assert invalid.status_code == 400
    assert invalid.json()["error"]["code"] == -32600
    assert post_mcp_path(server, "/sse/message?sessionId=" + "0" * 32, alice_token).status_code == 404
    assert post_mcp_path(server, endpoint, bob_token).status_code == 404
    stream.close()


def test_sse_sends_keepalive_comments(tmp_path: Any, server: LiveServer, alice_token: str) -> None:
    # The server under test sends them every MCP_KEEPALIVE_SECONDS (15 s by default, at most 25).
    from tests.support.live import prepare_server

    fast = prepare_server(tmp_path, MCP_KEEPALIVE_SECONDS="1").start()
    try:
        from tests.support.live import create_user
        from tests.support.oauth import Browser as B

        create_user(fast.env, "carol", "carol-password-789")
        browser = B(fast.url)
        assert browser.login("carol", "carol-password-789").status_code == 302
        token = obtain_token(fast.url, browser)["access_token"]
        stream = SSEStream(fast.url, token)
        first = stream.next()
        assert first is not None and first[0] == "endpoint"
        comment = stream.next(timeout=5, skip_comments=False)
        assert comment is not None and comment[0] == "comment"
        stream.close()
    finally:
        fast.stop()


# --- Revocation, tools, audit -----------------------------------------------------------------


def test_revoking_a_token_closes_its_open_stream(server: LiveServer, alice_browser: Browser) -> None:
    token = obtain_token(server.url, alice_browser)
    stream, _endpoint = open_sse_session(server, token["access_token"])
    client = token["client"]
    revoked = httpx.post(
        f"{server.url}/revoke", data={"token": token["access_token"], "client_id": client.client_id}
    )
    assert revoked.status_code == 200
    started = time.monotonic()
    assert stream.ended_within(15), "the stream stayed open after revocation"
    assert time.monotonic() - started < 15
    assert stream.end == "clean"
    stream.close()


def test_whoami_names_the_user_and_client(server: LiveServer, alice_token: str) -> None:
    client = MCPHttp(server.url, alice_token)
    client.initialize()
    result = client.call("whoami", {})["result"]
    data = (
        result["structuredContent"]
        if "structuredContent" in result
        else json.loads(result["content"][0]["text"])
    )
    data = data.get("result", data)
    assert data["username"] == "alice"
    assert data["email"] == "alice@example.com"
    assert data["client"] == "Test MCP client"
    assert data["scopes"] == ["mcp"]
    client.close()


def test_the_permission_gated_tool_is_hidden_and_refused_until_granted(
    server: LiveServer, bob_token: str, operator_browser: Browser
) -> None:
    client = MCPHttp(server.url, bob_token)
    client.initialize()
    names = {t["name"] for t in client.request("tools/list")["result"]["tools"]}
    assert "server_stats" not in names
    refused = client.call("server_stats", {})["result"]
    assert refused["isError"] is True
    assert "Unknown tool" in refused["content"][0]["text"]

    # Granted in admin: the token's cached check (which carries its permissions) is dropped.
    ((permission,),) = server.sql("SELECT id FROM auth_permission WHERE codename = 'use_server_stats'")
    admin_set_user_permissions(operator_browser.http, "bob", [permission])
    names = {t["name"] for t in client.request("tools/list")["result"]["tools"]}
    assert "server_stats" in names
    allowed = client.call("server_stats", {"hours": 1})["result"]
    assert allowed["isError"] is False
    client.close()

    def rows() -> list[tuple[Any, ...]]:
        return server.sql(
            "SELECT t.tool, t.outcome, t.arguments_bytes FROM mcpapp_toolcall t "
            "JOIN auth_user u ON u.id = t.user_id WHERE u.username = 'bob' AND t.tool = 'server_stats' "
            "ORDER BY t.created, t.id"
        )

    # The audit is written in batches, a moment after the calls.
    deadline = time.monotonic() + 10
    while len(rows()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [r[:2] for r in rows()] == [("server_stats", "denied"), ("server_stats", "ok")]


@pytest.mark.parametrize("bad_id", [{"a": 1}, [1], True])
def test_a_request_whose_id_is_not_a_string_or_number_gets_an_error_not_202(
    server: LiveServer, alice_token: str, bad_id: Any
) -> None:
    client = MCPHttp(server.url, alice_token)
    client.initialize()
    response = client.post({"jsonrpc": "2.0", "id": bad_id, "method": "tools/list"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32600
    client.close()
    stream, endpoint = open_sse_session(server, alice_token)
    legacy = post_mcp_path(server, endpoint, alice_token, {"jsonrpc": "2.0", "id": bad_id, "method": "ping"})
    assert legacy.status_code == 400
    assert legacy.json()["error"]["code"] == -32600
    stream.close()


def test_tools_say_what_they_are_and_the_server_shows_its_icon(server: LiveServer, alice_token: str) -> None:
    client = MCPHttp(server.url, alice_token, version="2025-11-25")
    init = client.initialize()
    info = sse_messages(init.text)[0]["result"]["serverInfo"]
    assert info["title"] and info["websiteUrl"] == f"{server.url}/"
    (icon,) = info["icons"]
    assert icon["src"] == f"{server.url}/static/mcpapp/icon.svg"
    served = httpx.get(icon["src"], timeout=10)
    assert served.status_code == 200 and served.headers["content-type"].startswith("image/svg")
    tools = {t["name"]: t for t in client.request("tools/list")["result"]["tools"]}
    assert tools["add"]["title"] == "Add two numbers"
    assert tools["add"]["annotations"] == {
        "title": "Add two numbers",
        "readOnlyHint": True,
        "destructiveHint": False,
        "idempotentHint": True,
        "openWorldHint": False,
    }
    assert tools["github_user"]["annotations"]["openWorldHint"] is True
    assert tools["github_user"]["icons"] == [
        {"src": f"{server.url}/static/mcpapp/tool-github.svg", "mimeType": "image/svg+xml"}
    ]
    assert "icons" not in tools["add"]
    # A docstring's hard line breaks are not the description's: paragraphs are.
    assert "\n" not in tools["whoami"]["description"]
    assert tools["github_user"]["description"].count("\n\n") == 1
    client.close()


def test_refused_arguments_are_explained_in_a_line_per_field(server: LiveServer, alice_token: str) -> None:
    client = MCPHttp(server.url, alice_token)
    client.initialize()
    result = client.call("add", {"a": "twenty-three"})["result"]
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert text.startswith("Invalid arguments: ")
    assert "a: " in text and "b: " in text
    assert "pydantic" not in text and "type=" not in text
    client.close()


@pytest.mark.parametrize("path", ["/mcp", "/sse"])
def test_an_endpoint_opened_in_a_browser_explains_itself(server: LiveServer, path: str) -> None:
    response = httpx.get(
        f"{server.url}{path}", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, timeout=10
    )
    assert response.status_code == 401  # still the challenge a client needs
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert response.headers["content-type"].startswith("text/html")
    assert "This is an MCP endpoint" in response.text
    assert f"npx mcp-remote {server.url}{path}" in response.text
