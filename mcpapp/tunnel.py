"""Both halves of cross-worker forwarding, side by side.

A request for a session another worker owns travels there whole (method, path, headers,
body, and the already-checked caller) through the owner's inbox on the bus; the owner serves
it exactly like a local request, and every ASGI message of its answer comes back through
the forwarding worker's inbox, keyed by the request id. Nothing is created per request on
Redis: each worker has one inbox for its whole life.

    client ──HTTP──> worker B (forwarder)                         worker A (owner)
                     FORWARD_REQUEST {rid, from: B, scope, body} ──> serve(): dispatch locally
                     <── ANSWER {rid, message} ... (http.response.start, body chunks)
                     CANCEL {rid} ──> (the client went away)
                     <── ABORT {rid} (the owner could not finish: draining past its grace)

Nothing waits on a worker that is gone: a request to an owner that receives nothing is
answered at once (404 if the owner is dead, 503 if it is reconnecting to Redis), and one
watcher per forwarding worker checks the owners of in-flight requests four times a second,
ending the request (404 before the answer started, the end of the stream after) within about
1.25 s of an owner's death. The owner in turn learns that the forwarder is gone when an answer
reaches nobody, and treats that as the client's disconnect.

Nothing waits on a message that was lost either. Pub/sub delivers at most once: what is
published while a subscription is down is gone, and both workers are alive afterwards. So
when a worker's subscription drops, every exchange it is part of ends: as forwarder, each
request gets a retryable 503 (or, once answering, its stream ends with a retryable JSON-RPC
error for each unanswered request); as owner, each request it serves for others stops and
tells its forwarder (ABORT). An answer arriving for a request the forwarder no longer waits
for is answered with CANCEL, so the owner stops too; and an owner that has not started
answering within FORWARD_START_SECONDS (its subscription lost the request) is given up on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import RedisError

from .bus import HEARTBEAT_TTL_MS
from .guards import BODY_KEY
from .identity import SCOPE_KEY, Caller
from .metrics import METRICS
from .observability import REQUEST_ID
from .wire import (
    SESSION_NOT_FOUND,
    BackendUnavailable,
    Message,
    Receive,
    Scope,
    Send,
    send_jsonrpc_error,
    send_unavailable,
)

if TYPE_CHECKING:
    from .bus import Bus
    from .registry import Registry, SessionEntry

logger = logging.getLogger(__name__)

FORWARD_REQUEST = "req"
ANSWER = "msg"
CANCEL = "cancel"
ABORT = "abort"
OWNER_WATCH_SECONDS = 0.25
# The owner starts every answer at once (an event stream's headers, a 202): no start within
# this long means the request was lost on the way.
FORWARD_START_SECONDS = 5.0

_DISCONNECTED: dict[str, Any] = {"k": "client_gone"}
_OWNER_GONE: dict[str, Any] = {"k": "owner_gone"}
_LOST: dict[str, Any] = {"k": "lost"}  # this worker's subscription dropped: answers may be lost

Dispatch = Callable[[Scope, Receive, Send], Awaitable[None]]


def encode_scope(scope: Scope) -> dict[str, Any]:
    return {
        "method": scope["method"],
        "path": scope["path"],
        "query_string": scope.get("query_string", b""),
        "headers": [[k, v] for k, v in scope.get("headers", ())],
        "request_id": scope.get("mcp.request_id", ""),
    }


def decode_scope(data: dict[str, Any], caller: Caller) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "method": data["method"],
        "path": data["path"],
        "raw_path": data["path"].encode(),
        "root_path": "",
        "query_string": data["query_string"],
        "headers": [(bytes(k), bytes(v)) for k, v in data["headers"]],
        "client": None,
        "server": None,
        "mcp.request_id": data.get("request_id", ""),
        "mcp.forwarded": True,
        SCOPE_KEY: caller,
        "user": caller.sdk_user,
    }


@dataclass(slots=True)
class _Serving:
    """A request this worker serves for another: who forwarded it, and whether it has ended
    for the forwarder (its client left, or the link is lost)."""

    reply_to: str
    gone: anyio.Event = field(default_factory=anyio.Event)
    settled: bool = False  # the forwarder knows it ended (it cancelled, or was sent ABORT)


class Tunnel:
    def __init__(self, *, bus: Bus, registry: Registry, worker_id: str, dispatch: Dispatch) -> None:
        self.bus = bus
        self.registry = registry
        self.worker_id = worker_id
        self.dispatch = dispatch
        self._ids = itertools.count(1)
        # Requests this worker forwarded, waiting for answers: rid -> (owner, queue).
        self.pending: dict[str, tuple[str, asyncio.Queue[dict[str, Any]]]] = {}
        # Requests this worker serves for others.
        self.serving: dict[str, _Serving] = {}
        self._watcher: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    # --- bus messages -------------------------------------------------------------------------

    def deliver(self, payload: dict[str, Any]) -> None:
        """A message arrived in this worker's inbox (called on the event loop)."""
        kind = payload.get("k")
        rid = str(payload.get("rid", ""))
        if kind == FORWARD_REQUEST:
            self._spawn(self._serve_safely(payload))
        elif kind in (ANSWER, ABORT):
            waiting = self.pending.get(rid)
            if waiting is not None:
                waiting[1].put_nowait(payload)
            elif kind == ANSWER and payload.get("o"):
                # An answer to a request given up on (its client left, or this worker's
                # subscription dropped meanwhile): the owner stops serving it.
                self._spawn(self._send_quietly(str(payload["o"]), {"k": CANCEL, "rid": rid}))
        elif kind == CANCEL:
            serving = self.serving.get(rid)
            if serving is not None:
                serving.settled = True
                serving.gone.set()

    def connection_lost(self) -> None:
        """This worker's subscription dropped: any message of an exchange in flight may have
        been lost, so every one of them ends now rather than wait for what may never come."""
        for _owner, queue in self.pending.values():
            queue.put_nowait(_LOST)
        for serving in self.serving.values():
            serving.gone.set()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send_quietly(self, worker_id: str, message: dict[str, Any]) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.bus.send(worker_id, message)

    # --- the forwarding half ------------------------------------------------------------------

    async def forward(
        self, entry: SessionEntry, session_id: str, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> None:
        """Hand the request to the worker that owns the session and relay its answer."""
        caller: Caller = scope[SCOPE_KEY]
        if not self.bus.connected:
            # The answer would come back through this worker's subscription, which is down.
            await send_unavailable(send, "Redis is unavailable")
            return
        rid = f"{self.worker_id}:{next(self._ids)}"
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pending[rid] = (entry.owner, queue)
        self._ensure_watcher()
        started = False
        client_task: asyncio.Task[None] | None = None
        try:
            request = {
                "k": FORWARD_REQUEST,
                "rid": rid,
                "from": self.worker_id,
                "scope": encode_scope(scope),
                "caller": caller.encode(),
                "body": body,
            }
            logger.info("forwarding %s %s to worker %s", scope["method"], scope["path"], entry.owner[:8])
            if not await self._deliver(entry, session_id, request, send):
                return

            async def watch_client() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                queue.put_nowait(_DISCONNECTED)

            loop = asyncio.get_running_loop()
            client_task = loop.create_task(watch_client())
            start_by = loop.time() + FORWARD_START_SECONDS
            while True:
                if started:
                    item = await queue.get()
                else:
                    try:
                        item = await asyncio.wait_for(queue.get(), timeout=max(0.0, start_by - loop.time()))
                    except TimeoutError:
                        item = _LOST
                kind = item.get("k")
                if item is _LOST:
                    # Whatever the owner sends now may never arrive: end it here, and tell the
                    # owner to stop (if Redis lets us; the owner's own checks stop it otherwise).
                    METRICS.forwards.labels(direction="out", outcome="lost").inc()
                    self._spawn(self._send_quietly(entry.owner, {"k": CANCEL, "rid": rid}))
                    if not started:
                        await send_unavailable(send, "The link to the session's worker was interrupted")
                    return
                if item is _DISCONNECTED:
                    with contextlib.suppress(RedisError, OSError):
                        await self.bus.send(entry.owner, {"k": CANCEL, "rid": rid})
                    METRICS.forwards.labels(direction="out", outcome="client_gone").inc()
                    return
                if item is _OWNER_GONE or kind == ABORT:
                    METRICS.forwards.labels(direction="out", outcome="owner_gone").inc()
                    if not started:
                        if item is _OWNER_GONE:
                            await self.registry.forget(session_id, owner=entry.owner)
                            await send_jsonrpc_error(send, 404, SESSION_NOT_FOUND, "Session not found")
                        else:
                            await send_unavailable(send, "The worker holding this session is restarting")
                    return
                message: Message = item["m"]
                if message["type"] == "http.response.start":
                    started = True
                    message = {
                        **message,
                        "headers": [(bytes(k), bytes(v)) for k, v in message.get("headers", ())],
                    }
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    METRICS.forwards.labels(direction="out", outcome="answered").inc()
                    return
        finally:
            # A stream the owner did not finish is ended by the consumer (MCPConsumer).
            self.pending.pop(rid, None)
            if client_task is not None:
                client_task.cancel()

    async def _deliver(
        self, entry: SessionEntry, session_id: str, request: dict[str, Any], send: Send
    ) -> bool:
        """Publish the request to its owner. An owner with no subscription is either gone (no
        heartbeat: 404, its registry entry deleted) or reconnecting to Redis (heartbeat still
        fresh): then wait, at most as long as a heartbeat lives, and send it again."""
        deadline = time.monotonic() + HEARTBEAT_TTL_MS / 1000 + 0.5
        try:
            while True:
                if await self.bus.send(entry.owner, request):
                    return True
                state = await self.bus.worker_state(entry.owner)
                if state == "gone":
                    METRICS.forwards.labels(direction="out", outcome="owner_gone").inc()
                    await self.registry.forget(session_id, owner=entry.owner)
                    await send_jsonrpc_error(send, 404, SESSION_NOT_FOUND, "Session not found")
                    return False
                if state == "reconnecting" and time.monotonic() > deadline:
                    METRICS.forwards.labels(direction="out", outcome="owner_reconnecting").inc()
                    await send_unavailable(send, "The worker holding this session is reconnecting")
                    return False
                await asyncio.sleep(0.05)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable("Redis is unavailable") from exc

    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch_owners())

    async def _watch_owners(self) -> None:
        """While requests are in flight, check their owners; end those of a dead one."""
        while self.pending:
            await asyncio.sleep(OWNER_WATCH_SECONDS)
            owners = {owner for owner, _queue in self.pending.values()}
            for owner in owners:
                try:
                    state = await self.bus.worker_state(owner)
                except (RedisError, OSError):
                    continue  # Redis itself is away: the bus reports that separately
                if state == "gone":
                    for waiting_owner, queue in list(self.pending.values()):
                        if waiting_owner == owner:
                            queue.put_nowait(_OWNER_GONE)

    # --- the owning half -----------------------------------------------------------------------

    async def _serve_safely(self, payload: dict[str, Any]) -> None:
        try:
            await self._serve(payload)
        except Exception:
            logger.exception("could not serve a forwarded MCP request")

    async def _serve(self, payload: dict[str, Any]) -> None:
        rid, reply_to = str(payload["rid"]), str(payload["from"])
        caller = Caller.decode(payload["caller"])
        # The forwarder's request id: this worker's log lines for the request carry it too.
        REQUEST_ID.set(str(payload["scope"].get("request_id") or "-"))
        logger.info(
            "serving %s %s forwarded by worker %s",
            payload["scope"]["method"],
            payload["scope"]["path"],
            reply_to[:8],
        )
        body: bytes = payload["body"]
        scope = {**decode_scope(payload["scope"], caller), BODY_KEY: body}
        serving = _Serving(reply_to)
        gone = serving.gone
        self.serving[rid] = serving
        given = False
        state = {"finished": False, "unheard": False}

        async def receive() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if gone.is_set():
                return
            answer = {"k": ANSWER, "rid": rid, "o": self.worker_id, "m": dict(message)}
            try:
                delivered = await self.bus.send(reply_to, answer)
            except (RedisError, OSError):
                delivered = -1  # not sent: the forwarder waits for it, and must be told
            if delivered > 0:
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    state["finished"] = True
            else:
                state["unheard"] = delivered == 0
                gone.set()  # the answer is lost: as good as a disconnect

        try:
            await self.dispatch(scope, receive, send)
            METRICS.forwards.labels(direction="in", outcome="answered").inc()
        finally:
            self.serving.pop(rid, None)
            if not state["finished"] and not serving.settled and not state["unheard"]:
                # Unfinished, and the forwarder may still wait for it: say it ended.
                await self._send_quietly(reply_to, {"k": ABORT, "rid": rid})

    async def abort_all(self) -> None:
        """Shutting down past the grace period: every forwarder still waiting on this worker
        gets ABORT (its client a clean 503 or the end of its stream), never silence."""
        for rid, serving in list(self.serving.items()):
            serving.settled = True
            serving.gone.set()
            await self._send_quietly(serving.reply_to, {"k": ABORT, "rid": rid})
