"""Readiness checks behind `/healthz`: each names one part and says "ok" or what failed.

Kept cheap and bounded (a few seconds at most) because the container healthcheck, the
proxy and any load balancer call it every few seconds.
"""

from __future__ import annotations

import asyncio

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.db import connection

CHECK_TIMEOUT_SECONDS = 3


def _failure(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}"


def database_check() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return _failure(exc)
    return "ok"


def cache_check() -> str:
    """A write and a read through Django's cache (Redis when REDIS_URL is set)."""
    try:
        cache.set("healthz", "ok", 10)
        return "ok" if cache.get("healthz") == "ok" else "error: value not stored"
    except Exception as exc:
        return _failure(exc)


def redis_check() -> str:
    """PING the Redis server itself, so a Redis outage is named as such."""
    import redis

    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
        socket_timeout=CHECK_TIMEOUT_SECONDS,
    )
    try:
        client.ping()
    except Exception as exc:
        return _failure(exc)
    finally:
        client.close()
    return "ok"


async def _channel_layer_round_trip() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel("healthz.")
    await layer.send(channel, {"type": "healthz.ping"})
    message = await layer.receive(channel)
    if message.get("type") != "healthz.ping":
        raise RuntimeError("unexpected message")


def channel_layer_check() -> str:
    """Send a message to ourselves over the channel layer the MCP sessions are routed on."""

    async def bounded() -> None:
        await asyncio.wait_for(_channel_layer_round_trip(), CHECK_TIMEOUT_SECONDS)

    try:
        async_to_sync(bounded)()
    except Exception as exc:
        return _failure(exc)
    return "ok"


def health_checks() -> dict[str, str]:
    checks = {"database": database_check()}
    if settings.REDIS_URL:
        checks["redis"] = redis_check()
    checks["cache"] = cache_check()
    checks["channel_layer"] = channel_layer_check()
    return checks
