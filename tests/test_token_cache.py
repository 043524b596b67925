"""The in-memory token cache: expired verdicts do not pile up, and a caller who gives up on a
token check does not take the others waiting for the same check down with it."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from mcpapp.auth import DB_EXECUTOR, NEGATIVE_TTL_SECONDS, TokenCache, token_checksum
from tests.support.live import LiveServer, prepare_server
from tests.support.mcp_http import initialize_body, post_json


def cached_verdicts(server: LiveServer) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    match = re.search(r'^mcp_worker_entries\{table="token_cache"\} (\S+)$', text, re.M)
    assert match
    return float(match.group(1))


def test_expired_verdicts_are_swept_without_waiting_for_the_cache_to_fill(tmp_path: Path) -> None:
    server = prepare_server(tmp_path).start()
    try:
        for n in range(30):
            assert post_json(f"{server.url}/mcp", f"no-such-token-{n}", initialize_body()).status_code == 401
        assert cached_verdicts(server) == 30  # "invalid", each remembered for a few seconds
        time.sleep(NEGATIVE_TTL_SECONDS + 0.5)
        assert post_json(f"{server.url}/mcp", "one-more-token", initialize_body()).status_code == 401
        assert cached_verdicts(server) == 1
    finally:
        server.stop()


@pytest.mark.django_db(transaction=True)
def test_a_cancelled_check_does_not_fail_the_others_waiting_for_the_same_token() -> None:
    cache = TokenCache(ttl=30)
    checksum = token_checksum("a-token-nobody-issued")
    # Every database thread busy: the check for the token waits its turn, as under load.
    release = threading.Event()
    busy = [DB_EXECUTOR.submit(release.wait, 10) for _ in range(DB_EXECUTOR._max_workers)]

    async def scenario() -> object:
        first = asyncio.ensure_future(cache.lookup(checksum))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(cache.lookup(checksum))  # joins the check under way
        await asyncio.sleep(0.05)
        first.cancel()  # its client went away
        await asyncio.sleep(0.05)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await asyncio.wait_for(second, 10)

    try:
        assert asyncio.run(scenario()) is None  # the check's answer: no such token
    finally:
        release.set()
        for future in busy:
            future.result(timeout=10)
    assert len(cache) == 1  # and the verdict was kept for the next request
