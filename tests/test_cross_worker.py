"""Any worker serves any session: two daphne processes sharing PostgreSQL and Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.forms import admin_set_user_permissions
from tests.support.live import OPERATOR, LiveServer, worker_pair
from tests.support.mcp_http import MCPHttp, SSEStream, initialize_body, post_json, raw_events, resume
from tests.support.oauth import Browser, obtain_token
from tests.support.services import fresh_postgres_database, fresh_redis_database

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, LiveServer]]:
    tmp: Path = tmp_path_factory.mktemp("workers")
    with fresh_postgres_database() as database_url, fresh_redis_database() as redis_url:
        first, second = worker_pair(
            tmp,
            database_url=database_url,
            redis_url=redis_url,
            users=(
                ("alice", "alice-password-123", {}),
                ("bob", "bob-password-456", {}),
                (*OPERATOR, {"is_staff": True, "is_superuser": True}),
            ),
            MCP_CONFORMANCE_FIXTURES="true",  # test_reconnection, for resumption
        )
        try:
            yield first, second
        finally:
            first.stop()
            second.stop()


@pytest.fixture(scope="module")
def token(workers: tuple[LiveServer, LiveServer]) -> str:
    first, _ = workers
    browser = Browser(first.url)
    assert browser.login("alice", "alice-password-123").status_code == 302
    return obtain_token(first.url, browser)["access_token"]


@pytest.fixture(scope="module")
def bob_token(workers: tuple[LiveServer, LiveServer]) -> str:
    first, _ = workers
    browser = Browser(first.url)
    assert browser.login("bob", "bob-password-456").status_code == 302
    return obtain_token(first.url, browser)["access_token"]


def test_an_sse_session_on_one_worker_takes_messages_through_the_other(
    workers: tuple[LiveServer, LiveServer], token: str
) -> None:
    first, second = workers
    stream = SSEStream(first.url, token)
    event = stream.next()
    assert event is not None and event[0] == "endpoint"
    endpoint = second.url + event[1]

    assert post_json(endpoint, token, initialize_body("2024-11-05")).status_code == 202
    assert stream.next_message()["result"]["serverInfo"]["name"]
    assert (
        post_json(endpoint, token, {"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code
        == 202
    )
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 23, "b": 19}},
    }
    assert post_json(endpoint, token, call).status_code == 202
    answer = stream.next_message()
    assert answer["id"] == 7
    assert answer["result"]["content"][0]["text"] == "42"
    stream.close()


def test_a_streamable_http_session_moves_freely_between_workers(
    workers: tuple[LiveServer, LiveServer], token: str
) -> None:
    first, second = workers
    on_first = MCPHttp(first.url, token)
    on_first.initialize()
    # Every later request goes to the other worker, which does not hold the session.
    on_second = MCPHttp(second.url, token)
    on_second.session_id = on_first.session_id
    assert {"add", "whoami"} <= {t["name"] for t in on_second.request("tools/list")["result"]["tools"]}
    for _ in range(3):
        assert on_second.call("add", {"a": 23, "b": 19})["result"]["content"][0]["text"] == "42"
    # The standalone stream can be opened through the other worker too.
    stream = SSEStream(
        second.url,
        token,
        path="/mcp",
        **{"Mcp-Session-Id": on_first.session_id or "", "MCP-Protocol-Version": "2025-06-18"},
    )
    assert stream.status == 200
    stream.close()
    # Ending the session through the other worker ends it everywhere.
    assert on_second.http.delete("/mcp", headers=on_second.headers()).status_code == 200
    assert on_first.post({"jsonrpc": "2.0", "id": 50, "method": "tools/list"}).status_code == 404
    on_first.close()
    on_second.close()


def test_a_token_revoked_on_one_worker_dies_on_the_other(workers: tuple[LiveServer, LiveServer]) -> None:
    first, second = workers
    browser = Browser(first.url)
    assert browser.login("alice", "alice-password-123").status_code == 302
    issued = obtain_token(first.url, browser)
    client = MCPHttp(second.url, issued["access_token"])
    client.initialize()  # the second worker checks the token and keeps the verdict in memory
    revoked = httpx.post(
        f"{first.url}/revoke", data={"token": issued["access_token"], "client_id": issued["client"].client_id}
    )
    assert revoked.status_code == 200
    response = client.post({"jsonrpc": "2.0", "id": 9, "method": "tools/list"})
    assert response.status_code == 401
    client.close()


def test_another_users_token_cannot_reach_a_session_through_the_other_worker(
    workers: tuple[LiveServer, LiveServer], token: str, bob_token: str
) -> None:
    first, second = workers
    alice = MCPHttp(first.url, token)
    alice.initialize()
    bob = MCPHttp(second.url, bob_token)
    bob.session_id = alice.session_id
    refused = bob.post({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == -32600
    # Alice's session is untouched by the attempt.
    assert alice.call("add", {"a": 1, "b": 1})["result"]["content"][0]["text"] == "2"
    alice.close()
    bob.close()

    stream = SSEStream(first.url, token)
    event = stream.next()
    assert event is not None and event[0] == "endpoint"
    assert post_json(second.url + event[1], bob_token, initialize_body("2024-11-05")).status_code == 404
    assert post_json(second.url + event[1], token, initialize_body("2024-11-05")).status_code == 202
    assert stream.next_message()["result"]["protocolVersion"] == "2024-11-05"
    stream.close()


def test_an_ended_sse_session_answers_404_on_every_worker_at_once(
    workers: tuple[LiveServer, LiveServer], token: str
) -> None:
    first, second = workers
    stream = SSEStream(first.url, token)
    event = stream.next()
    assert event is not None and event[0] == "endpoint"
    endpoint = event[1]
    assert post_json(second.url + endpoint, token, initialize_body("2024-11-05")).status_code == 202
    stream.close()
    # The owner forgets the session when its stream ends; the other worker then finds no
    # owner to forward to and answers 404 itself, without waiting for one.
    deadline = time.monotonic() + 5
    while True:
        started = time.monotonic()
        status = post_json(
            second.url + endpoint, token, {"jsonrpc": "2.0", "method": "notifications/initialized"}
        )
        elapsed = time.monotonic() - started
        if status.status_code == 404 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status.status_code == 404
    assert elapsed < 2
    assert post_json(first.url + endpoint, token, initialize_body("2024-11-05")).status_code == 404


def test_a_stream_closed_on_one_worker_resumes_through_the_other(
    workers: tuple[LiveServer, LiveServer], token: str
) -> None:
    first, second = workers
    client = MCPHttp(first.url, token, version="2025-11-25")
    client.initialize()
    call = {
        "jsonrpc": "2.0",
        "id": 62,
        "method": "tools/call",
        "params": {"name": "test_reconnection", "arguments": {}},
    }
    response = httpx.post(f"{first.url}/mcp", content=json.dumps(call), headers=client.headers(), timeout=30)
    assert response.status_code == 200
    events = raw_events(response)
    assert events[0]["retry"] == "1000"
    # The owner keeps the event store; the resume lands on the other worker and is forwarded.
    answer = resume(second.url, token, client, events[-1]["id"], 62)
    assert answer["result"]["content"][0]["text"] == "Reconnection test completed successfully"
    client.close()


def test_a_permission_granted_or_revoked_in_admin_applies_on_every_worker_at_once(
    workers: tuple[LiveServer, LiveServer], token: str
) -> None:
    first, second = workers
    ((permission,),) = first.sql("SELECT id FROM auth_permission WHERE codename = 'use_server_stats'")
    operator = Browser(first.url)
    assert operator.login(*OPERATOR).status_code == 302
    # Alice works through the other worker, where her token's check (and permissions) are cached.
    client = MCPHttp(second.url, token)
    client.initialize()

    def tools() -> set[str]:
        return {tool["name"] for tool in client.request("tools/list")["result"]["tools"]}

    assert "server_stats" not in tools()
    admin_set_user_permissions(operator.http, "alice", [permission])
    assert "server_stats" in tools()
    assert client.call("server_stats", {})["result"]["structuredContent"]["hours"] == 24
    admin_set_user_permissions(operator.http, "alice", [])
    assert "server_stats" not in tools()
    refused = client.call("server_stats", {})["result"]
    assert refused["isError"] is True and refused["content"][0]["text"] == "Unknown tool: server_stats"
    client.close()
    operator.close()
