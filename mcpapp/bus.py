"""Each worker's link to Redis for what crosses workers: one subscription, a few keys.

One pub/sub connection per worker subscribes to exactly two channels, for as long as the
worker lives: its own inbox (requests forwarded to it and the answers to requests it
forwarded) and the shared revocation feed. Nothing subscribes per request. A separate pool
of command connections publishes and reads the session registry.

Liveness needs no guessing: PUBLISH returns how many subscribers received a message, so a
message to a worker that is gone reports 0 at once, and a worker's heartbeat key (refreshed
four times a second, expiring after 1 s) tells a dead worker (no subscription, no heartbeat)
from one whose subscription is reconnecting (no subscription yet, heartbeat still fresh).

When the subscription drops (Redis restarted, network trouble) the bus reconnects with
backoff and tells its listeners that messages may have been missed (`on_reset`), so the
token cache stops trusting itself until it is subscribed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.25
HEARTBEAT_TTL_MS = 1000
COMMAND_TIMEOUT_SECONDS = 2.0
PING_SECONDS = 3.0
# After this worker's subscription came back, Redis may have come back empty: other workers
# re-write their heartbeats and sessions within this long (a heartbeat write that may take a
# command timeout, then the subscription's longest backoff), so a missing key means
# "not yet", not "gone".
SETTLE_SECONDS = COMMAND_TIMEOUT_SECONDS + 2.0


def channel_prefix(url: str) -> str:
    """Names are scoped to the Redis database in use: pub/sub channels span databases."""
    path = urlsplit(url).path.strip("/") or "0"
    return f"mcp:{path}:"


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


COMMAND_CONNECTIONS = 32


def command_client(url: str) -> aioredis.Redis:
    """Connections for commands: short timeouts, one retry on a broken connection (a stale
    pooled connection after a Redis restart is replaced rather than failing the request) but
    none on a timeout (a hung Redis costs a request one timeout, not two), and a bounded pool
    that requests queue on: 200 sessions opened at once share a few dozen connections instead
    of each opening its own (which made some wait past the connect timeout)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=COMMAND_CONNECTIONS,
        timeout=COMMAND_TIMEOUT_SECONDS * 2,
        socket_timeout=COMMAND_TIMEOUT_SECONDS,
        socket_connect_timeout=COMMAND_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        health_check_interval=30,
    )
    return aioredis.Redis(connection_pool=pool)


class Bus:
    def __init__(
        self,
        url: str,
        worker_id: str,
        *,
        on_message: Callable[[str, Any], None],
        on_reset: Callable[[bool], None],
    ) -> None:
        self.url = url
        self.worker_id = worker_id
        self.prefix = channel_prefix(url)
        self.inbox = self.inbox_of(worker_id)
        self.revocations = f"{self.prefix}revoked"
        self.client = command_client(url)
        self._on_message = on_message
        self._on_reset = on_reset
        self.connected = False
        # When the subscription last came back after being lost (monotonic; None: never lost).
        self.resubscribed_at: float | None = None
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def inbox_of(self, worker_id: str) -> str:
        return f"{self.prefix}inbox:{worker_id}"

    def heartbeat_key(self, worker_id: str) -> str:
        return f"{self.prefix}alive:{worker_id}"

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._subscribe_forever()),
            loop.create_task(self._heartbeat_forever()),
        ]

    async def stop(self) -> None:
        """Unsubscribe and drop the heartbeat: other workers see this one gone at once."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(RedisError, OSError):
            await self.client.delete(self.heartbeat_key(self.worker_id))
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()

    async def _subscribe_forever(self) -> None:
        backoff = 0.1
        outage_logged = False
        lost_once = False
        while not self._stopping:
            pubsub = aioredis.Redis.from_url(
                self.url,
                socket_connect_timeout=COMMAND_TIMEOUT_SECONDS,
                socket_keepalive=True,
                retry=Retry(NoBackoff(), 0),  # a dropped link must surface here, not be papered over
                client_name=f"mcp-bus:{self.worker_id}",  # which worker it is, in CLIENT LIST
            ).pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.inbox, self.revocations)
                self.connected = True
                if lost_once:
                    self.resubscribed_at = time.monotonic()
                backoff = 0.1
                if outage_logged:
                    logger.warning("Redis is back: cross-worker routing and revocations resumed")
                    outage_logged = False
                self._on_reset(True)
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if not outage_logged:
                    logger.warning(
                        "Redis subscription lost (%s); sessions on other workers are unreachable "
                        "and token checks go to the database until it is back",
                        type(exc).__name__,
                    )
                    outage_logged = True
            finally:
                was_connected, self.connected = self.connected, False
                lost_once = True
                if was_connected:
                    self._on_reset(False)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            if not self._stopping:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _read(self, pubsub: Any) -> None:
        last_seen = time.monotonic()
        last_ping = last_seen
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if message is not None:
                last_seen = now
                if message.get("type") == "message":
                    channel = message["channel"].decode()
                    try:
                        payload = unpack(message["data"])
                    except Exception:
                        logger.warning("ignored a malformed message on %s", channel)
                        continue
                    self._on_message(channel, payload)
                elif message.get("type") == "pong":
                    last_seen = now
            if now - last_ping >= PING_SECONDS:
                await pubsub.ping()
                last_ping = now
            if now - last_seen > 2 * PING_SECONDS + 1:
                raise RedisError("no answer from Redis on the subscription")

    async def _heartbeat_forever(self) -> None:
        key = self.heartbeat_key(self.worker_id)
        while not self._stopping:
            with contextlib.suppress(RedisError, OSError):
                await self.client.set(key, b"1", px=HEARTBEAT_TTL_MS)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    # --- talking to other workers -----------------------------------------------------------------

    async def send(self, worker_id: str, message: dict[str, Any]) -> int:
        """Publish to a worker's inbox; how many subscribers got it (0: that worker is not there)."""
        return int(await self.client.publish(self.inbox_of(worker_id), pack(message)))

    async def worker_state(self, worker_id: str) -> str:
        """ "alive" (subscribed), "reconnecting" (not subscribed, heartbeat fresh) or "gone"."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.pubsub_numsub(self.inbox_of(worker_id))
            pipe.exists(self.heartbeat_key(worker_id))
            numsub, heartbeat = await pipe.execute()
        if numsub and int(numsub[0][1]) > 0:
            return "alive"
        return "reconnecting" if heartbeat or self.settling else "gone"

    @property
    def settling(self) -> bool:
        """Whether Redis may be missing what other workers re-write after an outage (their
        heartbeats, their sessions in the registry): while this worker's own subscription is
        down, and for SETTLE_SECONDS after it came back."""
        if not self.connected:
            return True
        return self.resubscribed_at is not None and time.monotonic() - self.resubscribed_at < SETTLE_SECONDS

    async def ping(self) -> None:
        await self.client.ping()
