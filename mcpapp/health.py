"""Readiness checks behind `/healthz`: each names one part and says "ok" or what failed.

Kept cheap and bounded because the container healthcheck (4 s), the proxy and any load
balancer call it every few seconds: the checks run side by side, each answers within
CHECK_TIMEOUT_SECONDS, and a database or cache that hangs is reported as failing instead of
waited for. They run in threads of their own, so a stuck check never holds up token checks;
while one is still stuck, the next health request reports it rather than queueing another
behind it. Nothing is created per check: the Redis checks use the worker's own connections
(its command pool and its one subscription).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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


# One thread per blocking check: a check stuck on a hung backend holds its own thread only.
HEALTH_EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mcp-health")
_running: dict[str, asyncio.Future[str]] = {}


async def _in_thread(name: str, check: Callable[[], str]) -> str:
    """`check` in a health thread, answered within CHECK_TIMEOUT_SECONDS. While an earlier
    run is still going (the backend hangs), it is waited for again, never run a second time."""
    future = _running.get(name)
    if future is None:
        future = asyncio.get_running_loop().run_in_executor(HEALTH_EXECUTOR, check)
        _running[name] = future
        future.add_done_callback(
            lambda done: _running.pop(name, None) if _running.get(name) is done else None
        )
    try:
        return await asyncio.wait_for(asyncio.shield(future), CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"error: no answer within {CHECK_TIMEOUT_SECONDS} s"


async def health_checks(worker: Worker) -> dict[str, str]:
    checks: dict[str, asyncio.Future[str]] = {
        "database": asyncio.ensure_future(_in_thread("database", database_check)),
        "cache": asyncio.ensure_future(_in_thread("cache", cache_check)),
    }
    if settings.REDIS_URL and worker.bus is not None:
        checks["redis"] = asyncio.ensure_future(_bounded("ok", worker.bus.ping()))
    await asyncio.gather(*checks.values())
    results = {name: future.result() for name, future in checks.items()}
    if "redis" in results:
        # The subscription that carries forwarded requests and revocations.
        if worker.bus is None or not worker.bus.connected:
            results["bus"] = "error: not subscribed"
        else:
            results["bus"] = "ok" if worker.sessions_restored else "error: restoring sessions"
    results["worker"] = "ok" if worker.state == "serving" else worker.state
    return results
