"""PostgreSQL and Redis for the production-mode run: a fresh database of our own in each,
removed afterwards, and what a run leaves behind in Redis."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

POSTGRES_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
# The same claim keys as the test suite's (tests/support/services.py): a bench run and a test
# run on one machine never empty each other's Redis database.
REDIS_LOCK = "mcp-test-db-lock:"


class BenchError(Exception):
    """Something the benchmark cannot run without; the message says what to do."""


def _reachable(url: str, default_port: int) -> tuple[str, int, bool]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=2):
            return host, port, True
    except OSError:
        return host, port, False


def require_services() -> None:
    """Production mode needs both stores; say so before anything starts."""
    missing = []
    for name, url, port, hint in (
        ("PostgreSQL", POSTGRES_ADMIN_URL, 5432, "user postgres, trust auth; or set BENCH_POSTGRES_URL"),
        ("Redis", REDIS_URL, 6379, "or set BENCH_REDIS_URL"),
    ):
        host, port, ok = _reachable(url, port)
        if not ok:
            missing.append(f"{name} is not reachable on {host}:{port} ({hint})")
    if missing:
        raise BenchError(
            "; ".join(missing) + ". The production-mode run (ours-prod) needs them; "
            "leave it out with --only ours-local,sdk-daphne,sdk-uvicorn."
        )


@contextmanager
def postgres_database() -> Iterator[str]:
    """An empty database for one server, dropped afterwards."""
    import psycopg

    name = f"mcp_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise BenchError(f"cannot create a PostgreSQL database through {POSTGRES_ADMIN_URL}: {exc}") from exc
    try:
        yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_database() -> Iterator[str]:
    """A Redis logical database (1-15) claimed for this run, emptied before and after."""
    import redis

    admin = redis.Redis.from_url(f"{REDIS_URL}/0")
    owner = f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        db = next((n for n in range(1, 16) if admin.set(f"{REDIS_LOCK}{n}", owner, nx=True, ex=3600)), None)
    except redis.RedisError as exc:
        admin.close()
        raise BenchError(f"cannot use Redis at {REDIS_URL}: {exc}") from exc
    if db is None:
        admin.close()
        raise BenchError("every Redis database 1-15 is claimed by a test or bench run; try again later")
    url = f"{REDIS_URL}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        if admin.get(f"{REDIS_LOCK}{db}") == owner.encode():
            admin.delete(f"{REDIS_LOCK}{db}")
        admin.close()


@dataclass
class RedisSnapshot:
    """PUBSUB CHANNELS and NUMPAT are server-wide (pub/sub ignores databases); the
    subscriptions and connections counted on our database are this server's alone."""

    pubsub_channels: int
    pubsub_numpat: int
    keys: int
    subscriptions_on_db: int
    connections_on_db: int
    used_memory_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def redis_snapshot(url: str) -> tuple[RedisSnapshot, set[str]]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        db = client.connection_pool.connection_kwargs.get("db", 0)
        channels = {
            c.decode(errors="replace") if isinstance(c, bytes) else c for c in client.pubsub_channels()
        }
        clients = [c for c in client.client_list() if str(c.get("db")) == str(db)]
        # Our own connection is one of them and subscribes to nothing.
        snapshot = RedisSnapshot(
            pubsub_channels=len(channels),
            pubsub_numpat=int(client.pubsub_numpat()),
            keys=int(client.dbsize()),
            subscriptions_on_db=sum(int(c.get("sub", 0)) + int(c.get("psub", 0)) for c in clients),
            connections_on_db=len(clients) - 1,
            used_memory_bytes=int(client.info("memory")["used_memory"]),
        )
        return snapshot, channels
    finally:
        client.close()
