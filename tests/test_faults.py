"""An operator's bad day on the MCP endpoints: a worker killed, Redis or PostgreSQL down and
back, hundreds of idle sessions. Two workers with compose's web command, as in production.

Each ends cleanly: a dead worker's sessions answer 404 within 2 s everywhere and the streams
relayed for them end; an outage is a retryable 503 (JSON-RPC error, Retry-After), never a
500; nothing is lost (audit rows of calls made while the database was down are written once
it is back); everything recovers without a restart; memory stays flat.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.live import LiveServer, create_users, free_port, prepare_server
from tests.support.mcp_http import ACCEPT, MCPHttp, SSEStream, initialize_body, sse_messages
from tests.support.oauth import Browser, obtain_token
from tests.support.services import fresh_postgres_database, fresh_redis_database

USER = ("fay", "fay-password-123")


@dataclass
class Pair:
    first: LiveServer
    second: LiveServer

    def token(self) -> str:
        browser = Browser(self.first.url)
        assert browser.login(*USER).status_code == 302
        token: str = obtain_token(self.first.url, browser, resource=self.first.url)["access_token"]
        browser.close()
        return token


def two_workers(tmp: Path, *, database_url: str, redis_url: str, **env: str) -> Pair:
    port_a, port_b = free_port(), free_port()
    first = prepare_server(
        tmp,
        database_url=database_url,
        port=port_a,
        REDIS_URL=redis_url,
        PUBLIC_URL=f"http://127.0.0.1:{port_a}",
        **env,
    )
    create_users(first.env, (*USER, {}))
    second = LiveServer(env={**first.env}, port=port_b, log_path=tmp / f"server-{port_b}.log")
    first.start()
    second.start()
    return Pair(first, second)


def post(url: str, token: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(
        url,
        json=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": ACCEPT,
            "Content-Type": "application/json",
            **headers,
        },
        timeout=30,
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with fresh_postgres_database() as database_url, fresh_redis_database() as redis_url:
        workers = two_workers(
            tmp_path, database_url=database_url, redis_url=redis_url, MCP_CONFORMANCE_FIXTURES="true"
        )
        try:
            yield workers
        finally:
            workers.first.stop()
            workers.second.stop()


@pytest.mark.postgres
@pytest.mark.redis
def test_a_killed_workers_sessions_answer_404_within_two_seconds_and_its_relayed_streams_end(
    pair: Pair,
) -> None:
    token = pair.token()
    owner, other = pair.first, pair.second
    # A Streamable HTTP session on the owner, its standalone stream held through the other worker.
    session = MCPHttp(owner.url, token)
    session.initialize()
    relayed = SSEStream(
        other.url,
        token,
        path="/mcp",
        **{"Mcp-Session-Id": session.session_id or "", "MCP-Protocol-Version": session.version},
    )
    assert relayed.status == 200
    # A legacy SSE session on the owner, its messages posted through the other worker.
    legacy = SSEStream(owner.url, token)
    event = legacy.next()
    assert event is not None and event[0] == "endpoint"
    endpoint = other.url + event[1]
    assert post(endpoint, token, initialize_body("2024-11-05")).status_code == 202

    assert owner.process is not None
    owner.process.kill()
    killed = time.monotonic()
    owner.process.wait(timeout=10)

    # The very next request for each session, through the other worker: 404, within 2 s.
    through = MCPHttp(other.url, token)
    through.session_id = session.session_id
    answer = through.post({"jsonrpc": "2.0", "id": 5, "method": "tools/list"})
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == -32600
    assert time.monotonic() - killed < 2
    gone = post(endpoint, token, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert gone.status_code == 404
    # The stream relayed for the dead worker's session ended, properly, within 2 s.
    assert relayed.ended_within(max(0.1, 2 - (time.monotonic() - killed))), "the relayed stream stayed open"
    assert relayed.end == "clean"
    # The surviving worker carries on: new sessions work.
    fresh = MCPHttp(other.url, token)
    fresh.initialize()
    assert fresh.call("add", {"a": 2, "b": 2})["result"]["content"][0]["text"] == "4"
    for client in (session, through, fresh):
        client.close()
    relayed.close()
    legacy.close()


@pytest.mark.postgres
@pytest.mark.redis
def test_a_call_running_on_a_killed_worker_gets_a_retryable_error_through_the_other(pair: Pair) -> None:
    token = pair.token()
    owner, other = pair.first, pair.second
    session = MCPHttp(owner.url, token)
    session.initialize()
    through = MCPHttp(other.url, token)
    through.session_id = session.session_id
    answers: list[dict] = []

    def slow_call() -> None:
        response = through.post(
            {
                "jsonrpc": "2.0",
                "id": 9,
                "method": "tools/call",
                "params": {"name": "test_sleep", "arguments": {"seconds": 20}},
            }
        )
        answers.extend(m for m in sse_messages(response.text) if m.get("id") == 9)

    thread = threading.Thread(target=slow_call)
    thread.start()
    time.sleep(1)  # the call is running on the owner, relayed by the other worker
    assert owner.process is not None
    owner.process.kill()
    killed = time.monotonic()
    thread.join(timeout=10)
    assert time.monotonic() - killed < 2.5
    assert [a["error"]["code"] for a in answers] == [-32001]
    session.close()
    through.close()
