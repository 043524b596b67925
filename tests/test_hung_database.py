"""A PostgreSQL that hangs (it takes connections and never answers, as a stalled server or a
black-holed network does) gets deadlines, not waits: /healthz says so within its few seconds
(again and again, never queued behind a check still stuck), callers whose token is known keep
being served, a token not yet known gets a retryable 503, and all comes back when it does."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.live import create_users, prepare_server
from tests.support.mcp_http import MCPHttp, initialize_body, post_json
from tests.support.oauth import Browser, obtain_token
from tests.support.private_services import PrivatePostgres

USER = ("hana", "hana-password-123")
# /healthz's own deadline is a few seconds (the container healthcheck gives it 4 s).
HEALTH_DEADLINE = 4.5


def cluster_pids(postgres: PrivatePostgres) -> list[int]:
    """Our private cluster's postmaster and its children (never anyone else's)."""
    postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(entry.name))
    return [postmaster, *children]


@contextmanager
def hung(postgres: PrivatePostgres) -> Iterator[None]:
    """Freeze the cluster's processes (SIGSTOP): connections are accepted by the kernel and
    queries sent, and nothing ever answers. SIGCONT on the way out, whatever happened."""
    pids = cluster_pids(postgres)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_a_hung_database_gets_deadlines_not_waits(tmp_path: Path) -> None:
    with PrivatePostgres() as postgres:
        server = prepare_server(tmp_path, database_url=postgres.create_database("mcp"))
        create_users(server.env, (*USER, {}))
        server.start()
        try:
            browser = Browser(server.url)
            assert browser.login(*USER).status_code == 302
            known = obtain_token(server.url, browser, resource=server.url)["access_token"]
            unknown = obtain_token(server.url, browser, resource=server.url)["access_token"]
            browser.close()
            client = MCPHttp(server.url, known)
            client.initialize()

            with hung(postgres):
                for _ in range(3):  # each within the deadline: none waits behind a stuck one
                    health = httpx.get(f"{server.url}/healthz", timeout=HEALTH_DEADLINE)
                    assert health.status_code == 503
                    assert health.json()["checks"]["database"].startswith("error")
                assert client.call("add", {"a": 1, "b": 2})["result"]["content"][0]["text"] == "3"
                refused = post_json(f"{server.url}/mcp", unknown, initialize_body())
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["code"] == -32001 and refused.headers["retry-after"]

            deadline = time.monotonic() + 30
            while httpx.get(f"{server.url}/healthz", timeout=HEALTH_DEADLINE).status_code != 200:
                assert time.monotonic() < deadline, "the worker did not recover"
                time.sleep(0.2)
            again = MCPHttp(server.url, unknown)
            again.initialize()
            again.close()
            deadline = time.monotonic() + 30
            while server.sql("SELECT COUNT(*) FROM mcpapp_toolcall WHERE tool = 'add'")[0][0] < 1:
                assert time.monotonic() < deadline, "the call made while the database hung was not audited"
                time.sleep(0.2)
            client.close()
        finally:
            server.stop()
