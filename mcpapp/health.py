"""Readiness checks behind `/healthz`: each names one part and says "ok" or what failed.

Kept cheap and bounded (a few seconds at most) because the container healthcheck, the
proxy and any load balancer call it every few seconds. Nothing is created per check: the
Redis checks use the worker's own connections (its command pool and its one subscription).
"""

from __future__ import annotations

import asyncio

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connection

from .worker import Worker

CHECK_TIMEOUT_SECONDS = 3


def _failure(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}"


def database_check() -> str:
    close_old_connections()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return _failure(exc)
    finally:
        close_old_connections()
    return "ok"


def cache_check() -> str:
    """A write and a read through Django's cache (Redis when REDIS_URL is set)."""
    try:
        cache.set("healthz", "ok", 10)
        return "ok" if cache.get("healthz") == "ok" else "error: value not stored"
    except Exception as exc:
        return _failure(exc)


async def _bounded(check: str, coroutine: object) -> str:
    try:
        await asyncio.wait_for(coroutine, CHECK_TIMEOUT_SECONDS)  # type: ignore[arg-type]
    except Exception as exc:
        return _failure(exc)
    return check


async def health_checks(worker: Worker) -> dict[str, str]:
    from .auth import DB_EXECUTOR

    loop = asyncio.get_running_loop()
    checks: dict[str, str] = {}
    checks["database"] = await loop.run_in_executor(DB_EXECUTOR, database_check)
    if settings.REDIS_URL and worker.bus is not None:
        checks["redis"] = await _bounded("ok", worker.bus.ping())
        # The subscription that carries forwarded requests and revocations.
        if not worker.bus.connected:
            checks["bus"] = "error: not subscribed"
        else:
            checks["bus"] = "ok" if worker.sessions_restored else "error: restoring sessions"
    checks["cache"] = await loop.run_in_executor(DB_EXECUTOR, cache_check)
    checks["worker"] = "ok" if worker.state == "serving" else worker.state
    return checks
