"""SIGTERM drains a worker (what `docker compose stop` and `up --build` send); Ctrl-C stops it.

A draining worker refuses new sessions (503, Retry-After) and says so on /healthz, lets the
calls in flight finish, writes every audit record, and exits by itself; past the grace period
a call still running gets a retryable JSON-RPC error instead of silence.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live import LiveServer, create_user, prepare_server
from tests.support.mcp_http import ACCEPT, MCPHttp, SSEClient, SSEStream, initialize_body, sse_messages
from tests.support.oauth import Browser, obtain_token
from tests.support.services import fresh_postgres_database

USER = ("drew", "drew-password-123")


def started(tmp: Path, database_url: str | None = None, **env: Any) -> tuple[LiveServer, str]:
    server = prepare_server(tmp, database_url=database_url, MCP_CONFORMANCE_FIXTURES="true", **env)
    create_user(server.env, *USER)
    server.start()
    browser = Browser(server.url)
    assert browser.login(*USER).status_code == 302
    token = obtain_token(server.url, browser, resource=server.url)["access_token"]
    browser.close()
    return server, token


def call(client: MCPHttp, tool: str, arguments: dict[str, Any], request_id: int) -> dict[str, Any]:
    """One tools/call; the JSON-RPC answer (a result or an error)."""
    response = client.post(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
    )
    assert response.status_code == 200, response.text
    (answer,) = [m for m in sse_messages(response.text) if m.get("id") == request_id]
    return answer


def audit_count(server: LiveServer, tool: str) -> int:
    return server.sql("SELECT COUNT(*) FROM mcpapp_toolcall WHERE tool = ?", (tool,))[0][0]


Client = MCPHttp | SSEClient


def open_session(transport: str, server: LiveServer, token: str) -> Client:
    client: Client = MCPHttp(server.url, token) if transport == "streamable" else SSEClient(server.url, token)
    client.initialize()
    return client


def attempt(client: Client, tool: str, arguments: dict[str, Any], request_id: int) -> dict[str, Any] | None:
    """One tools/call: its JSON-RPC answer, or None if the worker refused it as one that is
    stopping (503, JSON-RPC -32001, Retry-After). Anything else fails: above all a call
    taken (200 or 202) that never gets its answer."""
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    response = client.post(body)
    if response.status_code == 503:
        assert response.json()["error"]["code"] == -32001, response.text
        assert response.headers["retry-after"]
        return None
    if isinstance(client, SSEClient):
        assert response.status_code == 202, response.text
        return client.answer(request_id)
    assert response.status_code == 200, response.text
    (answer,) = [m for m in sse_messages(response.text) if m.get("id") == request_id]
    return answer


def refused_as_new_session(transport: str, server: LiveServer, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if transport == "streamable":
        return httpx.post(
            f"{server.url}/mcp", json=initialize_body(), headers={**headers, "Accept": ACCEPT}, timeout=10
        )
    return httpx.get(f"{server.url}/sse", headers={**headers, "Accept": "text/event-stream"}, timeout=10)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The worker's database: its own SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.mark.parametrize("transport", ["streamable", "sse"])
def test_sigterm_lets_calls_finish_refuses_new_sessions_and_writes_every_audit_row(
    tmp_path: Path, transport: str, database_url: str | None
) -> None:
    server, token = started(tmp_path, database_url)
    slow_answers: list[dict[str, Any]] = []
    fast_answered = 0
    lock = threading.Lock()
    stop, terminated = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def slow(n: int) -> None:
        try:
            client = open_session(transport, server, token)
            answer = attempt(client, "test_sleep", {"seconds": 2}, 100 + n)
            assert answer is not None, "a call already running was refused"
            slow_answers.append(answer)
            client.close()
        except BaseException as exc:
            failures.append(exc)

    def fast() -> None:
        nonlocal fast_answered
        try:
            client = open_session(transport, server, token)
            n = 0
            while not stop.is_set():
                n += 1
                answer = attempt(client, "add", {"a": n, "b": 1}, n)
                if answer is None:  # the worker stopped taking calls: only after SIGTERM
                    assert terminated.is_set(), "a call was refused before the worker was told to stop"
                    break
                assert answer["result"]["content"][0]["text"] == str(n + 1), answer
                with lock:
                    fast_answered += 1
            client.close()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=slow, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=fast) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.7)  # the slow calls are running, the fast ones under way
    assert server.process is not None
    terminated.set()
    server.process.send_signal(signal.SIGTERM)

    # Draining: /healthz says so, and a new session is refused with a retryable 503.
    deadline = time.monotonic() + 5
    health = httpx.get(f"{server.url}/healthz", timeout=5)
    while health.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
        health = httpx.get(f"{server.url}/healthz", timeout=5)
    assert health.status_code == 503 and health.json()["status"] == "draining"
    opening = refused_as_new_session(transport, server, token)
    assert opening.status_code == 503
    assert opening.headers["retry-after"]
    assert opening.json()["error"]["code"] == -32001

    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not [t for t in threads if t.is_alive()], "a call is still waiting for its answer"
    assert not failures, failures
    # Every call that was running finished with its answer.
    assert sorted(a["result"]["content"][0]["text"] for a in slow_answers) == ["slept 2 s"] * 3
    assert server.process.wait(timeout=30) == 0

    # Exactly one audit row per answered call: none lost at shutdown, none invented.
    assert audit_count(server, "test_sleep") == 3
    assert audit_count(server, "add") == fast_answered > 0
    server.stop()


@pytest.mark.parametrize("transport", ["streamable", "sse"])
def test_past_the_grace_a_running_call_gets_a_retryable_error(tmp_path: Path, transport: str) -> None:
    server, token = started(tmp_path, MCP_DRAIN_SECONDS="1")
    client = open_session(transport, server, token)
    answers: list[dict[str, Any] | None] = []
    thread = threading.Thread(
        target=lambda: answers.append(attempt(client, "test_sleep", {"seconds": 20}, 7))
    )
    thread.start()
    time.sleep(0.5)
    assert server.process is not None
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    thread.join(timeout=15)
    assert answers and answers[0] is not None, "the call got no answer at all"
    assert answers[0]["error"]["code"] == -32001
    assert "send it again" in answers[0]["error"]["message"]
    assert server.process.wait(timeout=15) == 0
    assert time.monotonic() - began < 10
    if isinstance(client, SSEClient):
        assert client.stream.ended_within(5) and client.stream.end == "clean"
    client.close()
    server.stop()


def test_sigterm_ends_open_streams_properly(tmp_path: Path) -> None:
    server, token = started(tmp_path)
    sse = SSEStream(server.url, token)
    assert sse.next() is not None
    client = MCPHttp(server.url, token)
    client.initialize()
    standalone = SSEStream(
        server.url,
        token,
        path="/mcp",
        **{"Mcp-Session-Id": client.session_id or "", "MCP-Protocol-Version": client.version},
    )
    assert standalone.status == 200
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert sse.ended_within(5) and sse.end == "clean"
    assert standalone.ended_within(5) and standalone.end == "clean"
    assert server.process.wait(timeout=30) == 0
    sse.close()
    standalone.close()
    server.stop()


def test_a_worker_exits_after_the_sdk_ran_sync_code_in_its_threads(tmp_path: Path) -> None:
    # Prompts are sync functions that the SDK runs in AnyIO's worker threads, which under
    # daphne were never told to stop: the process then hung at exit until SIGKILL.
    server, token = started(tmp_path)
    client = MCPHttp(server.url, token)
    client.initialize()
    prompt = client.request("prompts/get", {"name": "test_simple_prompt"})
    assert prompt["result"]["messages"]
    client.close()
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=15) == 0
    # Those threads were released, not left to the exit watchdog (which is for a hung database).
    assert "exiting without waiting" not in server.log_path.read_text()
    server.stop()


@pytest.mark.parametrize("signals", [("SIGINT",), ("SIGTERM", "SIGINT")])
def test_ctrl_c_stops_at_once_and_cleanly(tmp_path: Path, signals: tuple[str, ...]) -> None:
    server, token = started(tmp_path)
    client = MCPHttp(server.url, token)
    client.initialize()
    running = threading.Thread(target=lambda: call(client, "test_sleep", {"seconds": 20}, 3))
    running.start()
    time.sleep(0.5)
    assert server.process is not None
    began = time.monotonic()
    for name in signals:
        server.process.send_signal(getattr(signal, name))
        time.sleep(0.1)
    assert server.process.wait(timeout=10) == 0
    # Not the 20 s drain: Ctrl-C means now (a SIGINT after SIGTERM cuts the drain short).
    assert time.monotonic() - began < 5
    running.join(timeout=10)
    client.close()
    server.stop()
    assert "Traceback" not in server.log()
