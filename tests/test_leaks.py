"""Nothing per request outlives the request: two workers on PostgreSQL and Redis take 200
requests of each kind, and Redis's channels, the registry and each worker's own tables
(as /metrics reports them) are back where they started."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.live import LiveServer, worker_pair
from tests.support.mcp_http import MCPHttp, SSEStream, initialize_body, post_json
from tests.support.oauth import Browser, obtain_token
from tests.support.services import fresh_postgres_database, fresh_redis_database

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ROUNDS = 200


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, LiveServer, str]]:
    tmp: Path = tmp_path_factory.mktemp("leaks")
    with fresh_postgres_database() as database_url, fresh_redis_database() as redis_url:
        first, second = worker_pair(
            tmp, database_url=database_url, redis_url=redis_url, users=(("lena", "lena-password-123", {}),)
        )
        try:
            yield first, second, redis_url
        finally:
            first.stop()
            second.stop()


def worker_tables(server: LiveServer) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        match.group(1): float(match.group(2))
        for match in re.finditer(r'^mcp_worker_entries\{table="([^"]+)"\} (\S+)$', text, re.M)
    }


def redis_state(redis_url: str) -> tuple[dict[str, int], int, list[str]]:
    """Our pub/sub channels with their subscriber counts, the registry's session keys, and
    every key in our database (the cache's included)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    db = redis_url.rsplit("/", 1)[-1]
    try:
        channels = sorted(str(c) for c in client.pubsub_channels(f"mcp:{db}:*"))
        counts = {name: int(n) for name, n in client.pubsub_numsub(*channels)} if channels else {}
        sessions = len(list(client.scan_iter(match=f"mcp:{db}:session:*", count=1000)))
        keys = sorted(str(key) for key in client.scan_iter(count=1000))
    finally:
        client.close()
    return {str(k): v for k, v in counts.items()}, sessions, keys


def settled(check: object, expected: object, seconds: float = 15) -> object:
    deadline = time.monotonic() + seconds
    value = check()  # type: ignore[operator]
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        value = check()  # type: ignore[operator]
    return value


def test_two_hundred_requests_of_each_kind_leave_nothing_behind(
    pair: tuple[LiveServer, LiveServer, str],
) -> None:
    first, second, redis_url = pair
    browser = Browser(first.url)
    assert browser.login("lena", "lena-password-123").status_code == 302
    token = obtain_token(first.url, browser, resource=first.url)["access_token"]

    # Warm up: the token is checked and cached once on each worker, and each worker's usage
    # throttle has its one entry for this token.
    for server in (first, second):
        warm = MCPHttp(server.url, token)
        warm.initialize()
        assert warm.http.delete("/mcp", headers=warm.headers()).status_code == 200
        warm.close()
    time.sleep(1)
    tables = [worker_tables(first), worker_tables(second)]
    # The health checks' one key is there from the start (the workers' own checks write it).
    for server in (first, second):
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    state = redis_state(redis_url)
    channels, sessions, _keys = state
    # Two workers: two inboxes with one subscriber each, and the shared revocation feed.
    assert sorted(n for name, n in channels.items() if ":inbox:" in name) == [1, 1]
    assert sessions == 0

    # 200 legacy SSE sessions opened, used once and closed, alternating workers.
    for n in range(ROUNDS):
        server = (first, second)[n % 2]
        stream = SSEStream(server.url, token)
        event = stream.next()
        assert event is not None and event[0] == "endpoint"
        assert post_json(server.url + event[1], token, initialize_body("2024-11-05")).status_code == 202
        assert stream.next_message()["id"] == 1
        stream.close()

    # 200 Streamable HTTP sessions: initialize, call, delete.
    for n in range(ROUNDS):
        client = MCPHttp((first, second)[n % 2].url, token)
        client.initialize()
        assert client.call("add", {"a": n, "b": 1})["result"]["content"][0]["text"] == str(n + 1)
        assert client.http.delete("/mcp", headers=client.headers()).status_code == 200
        client.close()

    # 200 calls forwarded: a session on the first worker, every call through the second.
    owner = MCPHttp(first.url, token)
    owner.initialize()
    through = MCPHttp(second.url, token)
    through.session_id = owner.session_id
    for n in range(ROUNDS):
        assert through.call("add", {"a": n, "b": 2})["result"]["content"][0]["text"] == str(n + 2)
    assert through.http.delete("/mcp", headers=through.headers()).status_code == 200
    owner.close()
    through.close()

    # 200 legacy SSE messages forwarded: the stream on the first worker, every POST through
    # the second (answered on the stream).
    stream = SSEStream(first.url, token)
    event = stream.next()
    assert event is not None and event[0] == "endpoint"
    assert post_json(second.url + event[1], token, initialize_body("2024-11-05")).status_code == 202
    assert stream.next_message()["id"] == 1
    for n in range(ROUNDS):
        call = {
            "jsonrpc": "2.0",
            "id": n + 2,
            "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": n, "b": 3}},
        }
        assert post_json(second.url + event[1], token, call).status_code == 202
        answer = stream.next_message()
        assert answer["id"] == n + 2 and answer["result"]["content"][0]["text"] == str(n + 3)
    stream.close()

    # 200 health checks.
    for n in range(ROUNDS):
        assert httpx.get(f"{(first, second)[n % 2].url}/healthz", timeout=10).status_code == 200

    assert settled(lambda: redis_state(redis_url), state) == state
    for server, before in zip((first, second), tables, strict=True):
        after = settled(lambda server=server: worker_tables(server), before)
        assert after == before, f"{server.url}: {before} -> {after}"
