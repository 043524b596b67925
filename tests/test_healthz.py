"""GET /healthz on a live worker: 200 when every part answers, 503 naming the part that does not."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.live import free_port, prepare_server
from tests.support.services import fresh_postgres_database, fresh_redis_database


@pytest.mark.postgres
@pytest.mark.redis
def test_it_answers_200_when_postgres_and_redis_answer(tmp_path: Path) -> None:
    with fresh_postgres_database() as database_url, fresh_redis_database() as redis_url:
        server = prepare_server(tmp_path, database_url=database_url, REDIS_URL=redis_url).start()
        try:
            response = httpx.get(f"{server.url}/healthz", timeout=10)
        finally:
            server.stop()
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "redis": "ok", "bus": "ok", "cache": "ok", "worker": "ok"},
    }


@pytest.mark.postgres
def test_it_answers_503_naming_redis_when_redis_is_down(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens here
    with fresh_postgres_database() as database_url:
        server = prepare_server(
            tmp_path, database_url=database_url, REDIS_URL=f"redis://127.0.0.1:{closed}/0"
        ).start(ready_statuses=(200, 503))
        try:
            response = httpx.get(f"{server.url}/healthz", timeout=20)
        finally:
            server.stop()
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error: ")
    assert body["checks"]["cache"].startswith("error: ")
    assert body["checks"]["bus"].startswith("error: ")
    assert body["checks"]["worker"] == "ok"


def test_it_answers_503_naming_the_database_when_it_is_gone(tmp_path: Path) -> None:
    server = prepare_server(tmp_path)
    # The SQLite file's directory disappears under the running server.
    database = Path(server.env["DATABASE_URL"].removeprefix("sqlite:///"))
    server.start()
    try:
        database.unlink()
        database.mkdir()  # a directory where the database file was: it cannot be opened
        response = httpx.get(f"{server.url}/healthz", timeout=10)
    finally:
        server.stop()
    assert response.status_code == 503, response.text
    checks = response.json()["checks"]
    assert checks["database"].startswith("error: ")
    assert checks["cache"] == "ok"
    assert checks["worker"] == "ok"
    assert "redis" not in checks and "bus" not in checks
