"""The per-process half of the MCP server: the sessions this worker owns and its lifecycle.

Each daphne process runs one `Worker`, started on its first request (daphne has no ASGI
lifespan) or by `mcpapp.lifecycle` when the server starts. It owns:
- the SDK's Streamable HTTP session manager (sessions, SSE/JSON answers, resumption, the
  stateless 2026-07-28 protocol) and the legacy SSE sessions (`sse.py`);
- with Redis: the bus (one subscription for life), the session registry, the tunnel to
  other workers, the revocation feed for the token cache;
- the audit writer;
- the drain: on SIGTERM it stops taking new sessions, lets in-flight calls finish, ends its
  streams, writes what it buffered and leaves Redis (`drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import anyio
from django.conf import settings
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from .audit import AuditWriter
from .auth import TOKEN_CACHE, apply_revocation
from .bus import Bus
from .events import SessionEventStore
from .identity import SCOPE_KEY, Caller
from .metrics import METRICS
from .registry import LocalRegistry, RedisRegistry, Registry, SessionEntry
from .server import build_server
from .sse import MESSAGE_PATH, SseTransport, session_id_from_query
from .tunnel import Tunnel
from .wire import Message, Receive, Scope, Send, header, send_unavailable

logger = logging.getLogger(__name__)

REGISTRY_REFRESH_FRACTION = 3  # refresh session entries three times per idle timeout


class SessionManager(StreamableHTTPSessionManager):
    """The SDK's manager, giving each session an event store of its own and telling the
    worker when a session ends (however it ends)."""

    def __init__(self, *args: Any, on_discard: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_discard = on_discard

    def _admit_session(self, requestor: Any) -> StreamableHTTPServerTransport | None:
        transport = super()._admit_session(requestor)
        if transport is not None:
            # One store per session: a resumption can only replay its own session's events.
            transport._event_store = SessionEventStore(
                max_events=settings.MCP_SSE_REPLAY_EVENTS, max_age_seconds=settings.MCP_SSE_REPLAY_SECONDS
            )
        return transport

    async def _discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        known = session_id in self._server_instances
        await super()._discard_session(session_id, transport)
        if known:
            self._on_discard(session_id)


class Worker:
    def __init__(self) -> None:
        self.id = uuid4().hex
        self.server = build_server()
        self.audit = AuditWriter(worker_id=self.id)
        self.server.audit = self.audit
        self.manager = SessionManager(
            app=self.server._lowlevel_server,
            # Replaced by a store per session (SessionManager._admit_session); set here so the
            # SDK knows sessions are resumable.
            event_store=SessionEventStore(max_events=1, max_age_seconds=1),
            json_response=False,
            stateless=False,
            # Host and Origin are checked in front of this (mcpapp.guards), against PUBLIC_URL.
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            session_idle_timeout=settings.MCP_SESSION_IDLE_SECONDS,
            max_request_body_size=settings.MCP_MAX_BODY_BYTES,
            retry_interval=settings.MCP_SSE_RETRY_MS or None,
            on_discard=self._mcp_session_ended,
        )
        self.bus: Bus | None = None
        self.registry: Registry = LocalRegistry()
        if settings.REDIS_URL:
            self.bus = Bus(
                settings.REDIS_URL, self.id, on_message=self._bus_message, on_reset=self._bus_reset
            )
            self.registry = RedisRegistry(self.bus, ttl_seconds=settings.MCP_SESSION_IDLE_SECONDS + 60)
        self.sse = SseTransport(
            lowlevel=self.server._lowlevel_server,
            registry=self.registry,
            worker_id=self.id,
            keepalive_seconds=settings.MCP_KEEPALIVE_SECONDS,
            on_call_start=self._call_started,
            on_call_end=self._call_finished,
        )
        self.tunnel: Tunnel | None = None
        # False from a lost Redis subscription until this worker's sessions are back in the
        # registry (Redis may have come back empty).
        self.sessions_restored = True
        if self.bus is not None:
            self.tunnel = Tunnel(
                bus=self.bus, registry=self.registry, worker_id=self.id, dispatch=self.dispatch
            )
        # Streamable HTTP sessions this worker created, for the registry (sid -> entry).
        self.mcp_sessions: dict[str, SessionEntry] = {}
        self.state = "starting"
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._streams: set[anyio.CancelScope] = set()
        self.requests: set[anyio.CancelScope] = set()
        self._stop = asyncio.Event()
        self._cut = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = asyncio.Event()
        METRICS.sessions.labels(transport="sse").set_function(lambda: len(self.sse.sessions))
        METRICS.sessions.labels(transport="streamable_http").set_function(
            lambda: len(self.manager._server_instances)
        )
        METRICS.watch_tables(
            {
                "token_cache": lambda: len(TOKEN_CACHE),
                "token_watchers": lambda: TOKEN_CACHE.watcher_count,
                "sse_sessions": lambda: len(self.sse.sessions),
                "mcp_sessions": lambda: len(self.mcp_sessions),
                "tunnel_pending": lambda: len(self.tunnel.pending) if self.tunnel else 0,
                "tunnel_serving": lambda: len(self.tunnel.serving) if self.tunnel else 0,
                "streams": lambda: len(self._streams),
                "requests": lambda: len(self.requests),
                "inflight": lambda: self._inflight,
                "audit_buffer": lambda: self.audit.pending,
                "last_used_throttle": lambda: self.audit.throttle_entries,
            }
        )
        METRICS.draining.set_function(lambda: 1 if self.state in {"draining", "closing"} else 0)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        TOKEN_CACHE.bind(loop)
        if self.bus is not None:
            TOKEN_CACHE.trusted = False  # until the revocation feed is subscribed
            self.bus.start()
        self.audit.start()
        ready = asyncio.Event()
        self._tasks.append(loop.create_task(self._run_manager(ready)))
        if self.bus is not None:
            self._tasks.append(loop.create_task(self._refresh_registry_forever()))
        await ready.wait()
        self.state = "serving"
        self._started.set()

    async def _run_manager(self, ready: asyncio.Event) -> None:
        async with self.manager.run():
            ready.set()
            await self._stop.wait()

    async def _refresh_registry_forever(self) -> None:
        period = max(5.0, settings.MCP_SESSION_IDLE_SECONDS / REGISTRY_REFRESH_FRACTION)
        while True:
            await asyncio.sleep(period)
            await self._refresh_registry()

    async def _refresh_registry(self) -> bool:
        entries = dict(self.mcp_sessions)
        entries.update({sid: self.sse.entry_for(s) for sid, s in self.sse.sessions.items()})
        try:
            await self.registry.refresh(entries)
        except Exception as exc:
            logger.warning("could not refresh the session registry (%s)", type(exc).__name__)
            return False
        return True

    def _bus_message(self, channel: str, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        if self.bus is not None and channel == self.bus.revocations:
            apply_revocation(payload)
        elif self.tunnel is not None:
            self.tunnel.deliver(payload)

    def _bus_reset(self, connected: bool) -> None:
        TOKEN_CACHE.reset(trusted=connected)
        if not connected:
            self.sessions_restored = False
            if self.tunnel is not None:
                # Messages of the exchanges in flight may have been lost: none waits for them.
                self.tunnel.connection_lost()
        elif self.state == "serving":
            # Redis may have come back empty: put this worker's sessions back.
            task = asyncio.get_running_loop().create_task(self._restore_registry())
            self._tasks.append(task)
            task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
        else:
            self.sessions_restored = True  # no session yet, or leaving

    async def _restore_registry(self) -> None:
        """Re-write every session of this worker until it succeeds (or the link drops again);
        /healthz says "ok" for the bus only then, so no request meets a session not yet back."""
        while self.bus is not None and self.bus.connected:
            if await self._refresh_registry():
                self.sessions_restored = True
                return
            await asyncio.sleep(0.5)

    def _mcp_session_ended(self, session_id: str) -> None:
        if self.mcp_sessions.pop(session_id, None) is not None:
            task = asyncio.get_running_loop().create_task(self.registry.forget(session_id, owner=self.id))
            self._tasks.append(task)
            task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def drain(self, *, grace: float) -> None:
        """Stop taking new sessions, let in-flight requests finish (up to `grace` seconds),
        end every stream, write the audit buffer, and leave Redis.

        Two phases: while "draining", existing sessions are still served (a client finishing
        its work) and the drain ends at the first moment nothing is in flight; then, "closing",
        every new request is refused with a retryable 503 while those already inside finish.
        In flight means a POST still running, and a legacy SSE request (answered 202) whose
        answer is not yet written on its stream: so legacy SSE streams end only after that,
        while Streamable HTTP's GET streams (which carry no answers) end at once.
        """
        if self.state != "serving":
            return
        self.state = "draining"
        deadline = time.monotonic() + grace
        logger.info(
            "draining: %d request(s) in flight, %d stream(s) open",
            self._inflight,
            len(self._streams) + len(self.sse.sessions),
        )
        self._end_streams()
        await self._wait_idle(until=deadline)
        self.state = "closing"
        await self._wait_idle(until=max(deadline, time.monotonic() + 1.0))
        if self._inflight:
            logger.warning(
                "drain: %d request(s) still running after %.0f s; ending them", self._inflight, grace
            )
            self.sse.end_all()  # its unanswered requests get a retryable error on the stream
            for scope in list(self.requests):
                scope.cancel()
            await self._wait_idle(until=time.monotonic() + 1.0)
        if self.tunnel is not None:
            await self.tunnel.abort_all()
        self._end_streams()
        await self.stop(audit_timeout=max(2.0, deadline - time.monotonic()))

    async def _wait_idle(self, *, until: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wait_idle_or_cut(), timeout=max(0.0, until - time.monotonic()))

    async def _wait_idle_or_cut(self) -> None:
        idle = asyncio.ensure_future(self._idle.wait())
        cut = asyncio.ensure_future(self._cut.wait())
        try:
            await asyncio.wait({idle, cut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            cut.cancel()

    def cut_drain_short(self) -> None:
        """A second, more urgent stop (Ctrl-C after SIGTERM): stop waiting for requests."""
        self._cut.set()

    async def stop(self, *, audit_timeout: float = 2.0) -> None:
        if self.state == "stopped":
            return
        self.state = "stopped"
        self._end_streams()
        self.sse.end_all()
        await self.audit.close(timeout=audit_timeout)
        self._stop.set()
        for sid in list(self.mcp_sessions):
            with contextlib.suppress(Exception):
                await self.registry.forget(sid, owner=self.id)
        for sid in list(self.sse.sessions):
            with contextlib.suppress(Exception):
                await self.registry.forget(sid, owner=self.id)
        if self.bus is not None:
            await self.bus.stop()
        for task in self._tasks:
            task.cancel()

    def _end_streams(self) -> None:
        for scope in list(self._streams):
            scope.cancel()

    # --- requests --------------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """New sessions are taken only while serving."""
        return self.state == "serving"

    @property
    def serving_requests(self) -> bool:
        """Requests of existing sessions are served until the drain's closing phase."""
        return self.state in {"serving", "draining"}

    @contextlib.asynccontextmanager
    async def tracked(self, scope: Scope) -> AsyncIterator[None]:
        """Count a request as in flight while it runs (the drain waits for it)."""
        self._call_started()
        try:
            yield
        finally:
            self._call_finished()

    def _call_started(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _call_finished(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    def endable(self, receive: Receive) -> Receive:
        """`receive` for a long-lived stream: the drain ends it by faking the client's leave."""

        async def wrapped() -> Message:
            if self.state != "serving":  # the drain ends streams at once
                return {"type": "http.disconnect"}
            scope = anyio.CancelScope()
            self._streams.add(scope)
            try:
                with scope:
                    return await receive()
            finally:
                self._streams.discard(scope)
            return {"type": "http.disconnect"}

        return wrapped

    def owns(self, session_id: str) -> bool:
        return self.sse.holds(session_id) or session_id in self.manager._server_instances

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a request for a session of this worker (or a new one), local or forwarded."""
        path, method = scope["path"], scope["method"]
        if not self.serving_requests:
            await send_unavailable(send, "This worker is restarting", retry_after=1)
            return
        if method == "GET":
            if path == "/sse":
                if not self.accepting:
                    await send_unavailable(send, "This worker is restarting", retry_after=1)
                    return
                # Ended by the drain (SseTransport.end_all) once its requests are answered.
                await self.sse.stream(scope, receive, send)
                return
            await self._mcp(scope, self.endable(receive), send)
            return
        async with self.tracked(scope):
            if path == MESSAGE_PATH:
                await self.sse.post(scope, receive, send, scope.get("mcp.body", b""))
            else:
                await self._mcp(scope, receive, send)

    async def _mcp(self, scope: Scope, receive: Receive, send: Send) -> None:
        requested = header(scope, b"mcp-session-id")
        opening = requested is None and scope["method"] == "POST"
        if opening and not self.accepting:
            await send_unavailable(send, "This worker is restarting", retry_after=1)
            return
        if opening and self.bus is not None and not self.bus.connected:
            await send_unavailable(send, "Redis is unavailable")
            return
        if not opening:
            await self.manager.handle_request(scope, receive, send)
            return
        caller: Caller = scope[SCOPE_KEY]

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                session_id = dict(message.get("headers") or ()).get(b"mcp-session-id")
                if session_id:
                    sid = session_id.decode()
                    entry = SessionEntry(
                        owner=self.id, user_id=caller.user_id, client_id=caller.client_id, kind="mcp"
                    )
                    self.mcp_sessions[sid] = entry
                    try:
                        await self.registry.claim(sid, entry)
                    except Exception as exc:
                        logger.warning("session %s is reachable on this worker only (%s)", sid[:8], exc)
            await send(message)

        await self.manager.handle_request(scope, receive, watch)

    def session_id_of(self, scope: Scope) -> str | None:
        if scope["path"] == MESSAGE_PATH:
            return session_id_from_query(scope)
        return header(scope, b"mcp-session-id")


_worker: Worker | None = None
_starting: asyncio.Future[Worker] | None = None


async def get_worker() -> Worker:
    """This process's worker, started on first use."""
    global _worker, _starting
    if _worker is not None and _worker._started.is_set():
        return _worker
    if _starting is None:
        _starting = asyncio.get_running_loop().create_future()
        worker = Worker()
        try:
            await worker.start()
        except BaseException as exc:
            _starting.set_exception(exc)
            _starting.exception()
            _starting = None
            raise
        _worker = worker
        _starting.set_result(worker)
        return worker
    return await asyncio.shield(_starting)


def current_worker() -> Worker | None:
    return _worker
