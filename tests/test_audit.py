"""The tool-call audit on a bad day: a record the database refuses, a write that fails half-way,
a buffer that overflows while PostgreSQL is down, and a worker stopped while it is down.

A refused record is dropped (logged at ERROR, counted in mcp_audit_rejected_total) and never
holds up the records after it; a batch is written whole or not at all, so a retried batch
never duplicates rows; past MCP_AUDIT_BUFFER records are dropped, logged and counted in
mcp_audit_dropped_total; at SIGTERM with the database down the buffer goes to
MCP_AUDIT_SPOOL_DIR, and the next worker to start with the database back writes it: nothing
lost, nothing written twice.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support import logcheck
from tests.support.live import LiveServer, create_users, prepare_server
from tests.support.mcp_http import MCPHttp, sse_messages
from tests.support.oauth import Browser, obtain_token
from tests.support.private_services import PrivatePostgres
from tests.support.services import fresh_postgres_database

KEEPER = ("kira", "kira-password-123")
VICTIM = ("vic", "vic-password-123")


def started(
    tmp: Path, database_url: str, *users: tuple[str, str], **env: str
) -> tuple[LiveServer, list[str]]:
    """A worker on `database_url` with `users`, and one access token for each."""
    server = prepare_server(tmp, database_url=database_url)
    server.env.update(env)
    create_users(server.env, *((name, password, {}) for name, password in users))
    server.start()
    tokens = []
    for credentials in users:
        browser = Browser(server.url)
        assert browser.login(*credentials).status_code == 302
        tokens.append(obtain_token(server.url, browser, resource=server.url)["access_token"])
        browser.close()
    return server, tokens


def session(server: LiveServer, token: str) -> MCPHttp:
    client = MCPHttp(server.url, token)
    client.initialize()
    return client


def eventually(check: Callable[[], Any], seconds: float = 10) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def audit_rows(
    server: LiveServer, where: str = "TRUE", params: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    return server.sql(
        "SELECT t.tool, t.outcome, t.error, u.username FROM mcpapp_toolcall t "
        f"LEFT JOIN auth_user u ON u.id = t.user_id WHERE {where} ORDER BY t.id",
        params,
    )


def metric(server: LiveServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.mark.postgres
def test_a_tool_name_postgres_cannot_store_neither_stalls_nor_loses_the_audit(
    tmp_path: Path, database_url: str
) -> None:
    server, (token,) = started(tmp_path, database_url, KEEPER)
    try:
        client = session(server, token)
        # A NUL in a text column is refused by PostgreSQL; the name is the client's choice.
        raw = (
            '{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"no\\u0000such","arguments":{}}}'
        )
        response = client.post(raw)
        assert response.status_code == 200, response.text
        (answer,) = [m for m in sse_messages(response.text) if m.get("id") == 9]
        assert answer["result"]["isError"] is True
        assert client.call("add", {"a": 20, "b": 22})["result"]["content"][0]["text"] == "42"

        # Both calls are audited, the odd name as readable text; neither holds up the other.
        rows = eventually(lambda: len(audit_rows(server)) >= 2 and audit_rows(server))
        assert rows == [
            ("no\ufffdsuch", "error", "Unknown tool: no\ufffdsuch", KEEPER[0]),
            ("add", "ok", "", KEEPER[0]),
        ]
        client.close()
    finally:
        server.stop()


@contextlib.contextmanager
def audit_table_locked(server: LiveServer) -> Iterator[psycopg.Connection[Any]]:
    """Hold the audit writer's INSERT back (a lock on its table) until the block ends; the
    block's connection may change the database meanwhile, committed when the lock goes."""
    with psycopg.connect(server.env["DATABASE_URL"]) as conn:
        conn.execute("LOCK TABLE mcpapp_toolcall IN ACCESS EXCLUSIVE MODE")
        yield conn


def wait_for_the_writer(conn: psycopg.Connection[Any]) -> None:
    """Until the audit writer waits on the lock, with a batch in hand."""
    deadline = time.monotonic() + 10
    while not conn.execute(
        "SELECT COUNT(*) FROM pg_locks WHERE relation = 'mcpapp_toolcall'::regclass AND NOT granted"
    ).fetchone()[0]:  # type: ignore[index]
        assert time.monotonic() < deadline, "the audit writer never tried to write"
        time.sleep(0.05)


@pytest.mark.postgres
def test_a_record_the_database_refuses_is_dropped_counted_and_logged_and_the_rest_is_written(
    tmp_path: Path, database_url: str
) -> None:
    server, (keeper_token, victim_token) = started(tmp_path, database_url, KEEPER, VICTIM)
    try:
        keeper, victim = session(server, keeper_token), session(server, victim_token)
        with audit_table_locked(server) as conn:
            assert victim.call("add", {"a": 1, "b": 1})["result"]["content"][0]["text"] == "2"
            assert keeper.call("add", {"a": 2, "b": 2})["result"]["content"][0]["text"] == "4"
            wait_for_the_writer(conn)
            # An operator deletes the victim while its record waits to be written. The row goes
            # at once (replica role: the tables that point at it are not this test's business).
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("DELETE FROM auth_user WHERE username = %s", (VICTIM[0],))
        logcheck.expect_log(r"ERROR mcpapp\.audit: .*refused 1 audit record")

        # The keeper's call is written; the record the database refuses is dropped, not retried.
        assert eventually(lambda: audit_rows(server, "t.tool = 'add'")) == [("add", "ok", "", KEEPER[0])]
        assert eventually(lambda: metric(server, "mcp_audit_rejected_total") == 1)
        # And the writer goes on: later calls are written.
        assert keeper.call("add", {"a": 3, "b": 3})["result"]["content"][0]["text"] == "6"
        assert eventually(lambda: len(audit_rows(server, "t.tool = 'add'")) == 2)
        assert metric(server, "mcp_audit_buffered") == 0
        assert metric(server, "mcp_audit_rejected_total") == 1
        keeper.close()
        victim.close()
    finally:
        server.stop()


@pytest.mark.postgres
def test_a_batch_whose_last_used_write_fails_is_retried_whole_without_duplicate_rows(
    tmp_path: Path, database_url: str
) -> None:
    server, (token,) = started(tmp_path, database_url, KEEPER)
    try:
        # "Last used" is written with the batch; make that part fail the way a transient
        # conflict does (SQLSTATE 40001: the database asks for a retry).
        server.sql(
            "CREATE FUNCTION refuse_use() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'try again' USING ERRCODE = '40001'; END $$"
        )
        server.sql(
            "CREATE TRIGGER refuse_use BEFORE UPDATE ON oauthapp_application "
            "FOR EACH ROW EXECUTE FUNCTION refuse_use()"
        )
        client = session(server, token)  # its first request notes the client's use
        assert client.call("add", {"a": 5, "b": 5})["result"]["content"][0]["text"] == "10"
        time.sleep(2)  # a few attempts, each failing on the "last used" write
        server.sql("DROP TRIGGER refuse_use ON oauthapp_application")

        assert eventually(lambda: metric(server, "mcp_audit_buffered") == 0)
        assert audit_rows(server, "t.tool = 'add'") == [("add", "ok", "", KEEPER[0])]
        used = server.sql("SELECT last_used_at FROM oauthapp_application WHERE last_used_at IS NOT NULL")
        assert len(used) == 1
        client.close()
    finally:
        server.stop()


def spooled(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(directory.glob("audit-*")) for line in path.open()]


def test_past_the_buffer_records_are_dropped_logged_and_counted_and_the_rest_written(tmp_path: Path) -> None:
    with PrivatePostgres() as postgres:
        server, (token,) = started(tmp_path, postgres.create_database("mcp"), KEEPER, MCP_AUDIT_BUFFER="100")
        try:
            client = session(server, token)  # the token is checked now, and then answered from memory
            postgres.stop()
            logcheck.expect_log(r"ERROR mcpapp\.audit: audit buffer full \(100 records")
            for n in range(120):
                assert client.call("add", {"a": n, "b": 1})["result"]["content"][0]["text"] == str(n + 1)
            assert metric(server, "mcp_audit_buffered") == 100
            assert metric(server, "mcp_audit_dropped_total") == 20

            postgres.start()
            assert eventually(lambda: metric(server, "mcp_audit_buffered") == 0, 20)
            # The first 100 calls, each once; the 20 past the buffer are gone (and said so).
            rows = server.sql("SELECT arguments_bytes FROM mcpapp_toolcall WHERE tool = 'add'")
            assert len(rows) == 100
            assert metric(server, "mcp_audit_written_total") == 100
            client.close()
        finally:
            server.stop()


def test_stopped_while_postgres_is_down_a_worker_spools_the_audit_and_the_next_writes_it(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    with PrivatePostgres() as postgres:
        database_url = postgres.create_database("mcp")
        first, (token,) = started(
            tmp_path, database_url, KEEPER, MCP_AUDIT_SPOOL_DIR=str(spool), MCP_DRAIN_SECONDS="2"
        )
        try:
            client = session(first, token)
            postgres.stop()
            for n in range(5):
                assert client.call("add", {"a": n, "b": 10})["result"]["content"][0]["text"] == str(n + 10)
            client.close()
            assert first.process is not None
            first.process.send_signal(signal.SIGTERM)
            assert first.process.wait(timeout=30) == 0
        finally:
            first.stop()
        records = spooled(spool)
        assert [(r["tool"], r["outcome"]) for r in records] == [("add", "ok")] * 5

        # The next worker to start, with the database back, writes them: once, all of them.
        postgres.start()
        second = prepare_server(tmp_path, database_url=database_url)
        second.env["MCP_AUDIT_SPOOL_DIR"] = str(spool)
        second.start()
        try:
            assert eventually(lambda: len(audit_rows(second, "t.tool = 'add'")) >= 5)
            assert audit_rows(second, "t.tool = 'add'") == [("add", "ok", "", KEEPER[0])] * 5
            assert list(spool.iterdir()) == []
            assert metric(second, "mcp_audit_buffered") == 0
        finally:
            second.stop()
        assert len(second.sql("SELECT id FROM mcpapp_toolcall")) == 5


def test_stopped_while_postgres_hangs_a_worker_exits_and_even_the_batch_in_doubt_is_written_once(
    tmp_path: Path,
) -> None:
    """PostgreSQL hangs (SIGSTOP: connections open, nothing answers) while the audit writer is
    in the middle of a write. SIGTERM: the worker exits within its grace anyway, spooling the
    buffer and the batch the stuck write holds; the next worker writes every record once. A
    spool written again (or a record that reached the database after all) adds nothing."""
    spool = tmp_path / "spool"
    with PrivatePostgres() as postgres:
        database_url = postgres.create_database("mcp")
        first, (token,) = started(
            tmp_path, database_url, KEEPER, MCP_AUDIT_SPOOL_DIR=str(spool), MCP_DRAIN_SECONDS="2"
        )
        try:
            client = session(first, token)
            assert client.call("add", {"a": 0, "b": 0})["result"]["content"][0]["text"] == "0"
            assert eventually(lambda: len(audit_rows(first, "t.tool = 'add'")) == 1)
            postgres.pause()
            try:
                for n in range(1, 6):  # the writer takes these and hangs writing them
                    assert client.call("add", {"a": n, "b": 10})["result"]["content"][0]["text"] == str(
                        n + 10
                    )
                time.sleep(1.0)
                for n in range(6, 9):  # these wait in the buffer behind the stuck write
                    assert client.call("add", {"a": n, "b": 10})["result"]["content"][0]["text"] == str(
                        n + 10
                    )
                client.close()
                logcheck.expect_log(r"ERROR mcpapp\.audit: the audit writer is still waiting on the database")
                assert first.process is not None
                first.process.send_signal(signal.SIGTERM)
                # Out within its grace (2 s) plus the drain's steps, not whenever PostgreSQL answers.
                assert first.process.wait(timeout=15) == 0
                # It did not wait for the thread stuck in the write, and said so.
                assert re.search(
                    r"WARNING mcpapp\.lifecycle: exiting without waiting for 1 thread\(s\) .*mcp-audit",
                    first.log_path.read_text(),
                )
            finally:
                postgres.resume()
        finally:
            first.stop()
        records = spooled(spool)
        assert sorted(r["arguments_bytes"] > 0 for r in records) == [True] * 8, records
        assert len({r["call_id"] for r in records}) == 8
        saved = {path.name: path.read_text() for path in spool.iterdir()}

        second = prepare_server(tmp_path, database_url=database_url)
        second.env["MCP_AUDIT_SPOOL_DIR"] = str(spool)
        second.start()
        try:
            assert eventually(lambda: len(audit_rows(second, "t.tool = 'add'")) >= 9)
            assert audit_rows(second, "t.tool = 'add'") == [("add", "ok", "", KEEPER[0])] * 9
            assert list(spool.iterdir()) == []
        finally:
            second.stop()

        # The same spool once more (as if the stuck write had committed after all): nothing new.
        for name, text in saved.items():
            (spool / name).write_text(text)
        third = prepare_server(tmp_path, database_url=database_url)
        third.env["MCP_AUDIT_SPOOL_DIR"] = str(spool)
        third.start()
        try:
            assert eventually(lambda: list(spool.iterdir()) == [])
            assert eventually(lambda: metric(third, "mcp_audit_buffered") == 0)
            assert len(third.sql("SELECT id FROM mcpapp_toolcall WHERE tool = 'add'")) == 9
        finally:
            third.stop()
