"""The real PostgreSQL and Redis services: found, or skipped locally, or failed under CI=true."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI needs it", pytrace=False)
    pytest.skip(message)


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database for one live server and drop it afterwards."""
    import psycopg

    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"mcp_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_redis_database() -> Iterator[str]:
    """A Redis logical database of our own, emptied before and after.

    Databases 1-15 are claimed with a lock key in database 0, so test runs that share the
    service (several checkouts on one machine) never empty each other's database.
    """
    import redis

    require_service("Redis", "127.0.0.1", 6379)
    admin = redis.Redis.from_url(f"{REDIS_TEST_URL}/0")
    owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    db = next((n for n in range(1, 16) if admin.set(f"mcp-test-db-lock:{n}", owner, nx=True, ex=3600)), None)
    if db is None:
        admin.close()
        pytest.fail("every Redis test database (1-15) is claimed by another test run", pytrace=False)
    url = f"{REDIS_TEST_URL}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        if admin.get(f"mcp-test-db-lock:{db}") == owner.encode():
            admin.delete(f"mcp-test-db-lock:{db}")
        admin.close()
