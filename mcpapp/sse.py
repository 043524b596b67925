"""The legacy HTTP+SSE transport (protocol 2024-11-05), still what many clients speak.

`GET /sse` opens the stream; its first event, `endpoint`, names `/sse/message?sessionId=...`,
where the client POSTs JSON-RPC messages (answered 202); answers go out on the stream as
`message` events. The SDK's low-level server runs each session; this module only moves
messages between HTTP and its streams, with a keep-alive comment every
MCP_KEEPALIVE_SECONDS. A session lives exactly as long as its stream.

A request POSTed here is in flight from its 202 until its answer is written on the stream:
the worker's drain waits for it (`on_call_start`, `on_call_end`), and only then ends the
streams (`end_all`). A request still unanswered when the server ends a stream gets a
retryable JSON-RPC error on it, never silence.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs
from uuid import uuid4

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import (
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError
from starlette.requests import Request

from .identity import SCOPE_KEY, Caller
from .registry import Registry, SessionEntry
from .wire import (
    INVALID_REQUEST,
    PARSE_ERROR,
    SESSION_NOT_FOUND,
    Receive,
    Scope,
    Send,
    send_jsonrpc_error,
    unfinished_request_event,
)

logger = logging.getLogger(__name__)

MESSAGE_PATH = "/sse/message"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


class SseSession:
    __slots__ = (
        "caller",
        "ended_by_server",
        "inbound_recv",
        "inbound_send",
        "outbound_recv",
        "outbound_send",
        "pending",
        "scope",
        "session_id",
    )

    def __init__(self, session_id: str, caller: Caller) -> None:
        self.session_id = session_id
        self.caller = caller
        # Ids of the requests taken (202) whose answer is not written yet.
        self.pending: Counter[str | int] = Counter()
        self.scope: anyio.CancelScope | None = None  # the stream's, once it runs
        self.ended_by_server = False
        self.inbound_send: MemoryObjectSendStream[Any]
        self.inbound_recv: MemoryObjectReceiveStream[Any]
        self.outbound_send: MemoryObjectSendStream[Any]
        self.outbound_recv: MemoryObjectReceiveStream[Any]
        self.inbound_send, self.inbound_recv = anyio.create_memory_object_stream[Any](32)
        self.outbound_send, self.outbound_recv = anyio.create_memory_object_stream[Any](32)


def session_id_from_query(scope: Scope) -> str | None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("sessionId") or query.get("session_id") or [None])[0]


class SseTransport:
    def __init__(
        self,
        *,
        lowlevel: Any,
        registry: Registry,
        worker_id: str,
        keepalive_seconds: float,
        on_change: Callable[[], None] = lambda: None,
        on_call_start: Callable[[], None] = lambda: None,
        on_call_end: Callable[[], None] = lambda: None,
    ) -> None:
        self.lowlevel = lowlevel
        self.init_options = lowlevel.create_initialization_options()
        self.registry = registry
        self.worker_id = worker_id
        self.keepalive = keepalive_seconds
        self.sessions: dict[str, SseSession] = {}
        self._on_change = on_change
        self._on_call_start = on_call_start
        self._on_call_end = on_call_end

    def entry_for(self, session: SseSession) -> SessionEntry:
        return SessionEntry(
            owner=self.worker_id,
            user_id=session.caller.user_id,
            client_id=session.caller.client_id,
            kind="sse",
        )

    async def stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /sse: open a session; its stream carries every answer until one side leaves."""
        caller: Caller = scope[SCOPE_KEY]
        session = SseSession(uuid4().hex, caller)
        self.sessions[session.session_id] = session
        try:
            await self.registry.claim(session.session_id, self.entry_for(session))
            self._on_change()
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            endpoint = f"{MESSAGE_PATH}?sessionId={session.session_id}"
            await send(
                {
                    "type": "http.response.body",
                    "body": f": open\n\nevent: endpoint\ndata: {endpoint}\n\n".encode(),
                    "more_body": True,
                }
            )
            async with anyio.create_task_group() as tg:
                session.scope = tg.cancel_scope
                if session.ended_by_server:  # end_all() came while the stream was opening
                    tg.cancel_scope.cancel()
                tg.start_soon(self._run_session, session)
                tg.start_soon(self._watch_client, receive, tg.cancel_scope)
                await self._write(session, send)
                tg.cancel_scope.cancel()
        finally:
            self.sessions.pop(session.session_id, None)  # first: no request joins it from here on
            if session.ended_by_server and session.pending:
                # The server is stopping before these were answered: say so, retryably.
                with anyio.move_on_after(2, shield=True), contextlib.suppress(Exception):
                    body = b"".join(unfinished_request_event(i) for i in session.pending.elements())
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            session.inbound_send.close()
            session.outbound_recv.close()
            for _ in session.pending.elements():
                self._on_call_end()
            session.pending.clear()
            self._on_change()
            with anyio.CancelScope(shield=True):
                await self.registry.forget(session.session_id, owner=self.worker_id)

    def end_all(self) -> None:
        """End every stream (the drain): the requests still unanswered get a retryable error."""
        for session in list(self.sessions.values()):
            session.ended_by_server = True
            if session.scope is not None:
                session.scope.cancel()

    def _answered(self, session: SseSession, request_id: str | int) -> None:
        if session.pending[request_id] > 0:
            session.pending[request_id] -= 1
            if not session.pending[request_id]:
                del session.pending[request_id]
            self._on_call_end()

    async def _run_session(self, session: SseSession) -> None:
        async with session.outbound_send:
            await self.lowlevel.run(session.inbound_recv, session.outbound_send, self.init_options)

    @staticmethod
    async def _watch_client(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _write(self, session: SseSession, send: Send) -> None:
        while True:
            with anyio.move_on_after(self.keepalive):
                try:
                    outbound = await session.outbound_recv.receive()
                except anyio.EndOfStream:
                    return  # the session ended on the server side
                message = outbound.message
                data = message.model_dump_json(by_alias=True, exclude_unset=True)
                await send(
                    {
                        "type": "http.response.body",
                        "body": f"event: message\ndata: {data}\n\n".encode(),
                        "more_body": True,
                    }
                )
                if isinstance(message, JSONRPCResponse | JSONRPCError) and message.id is not None:
                    self._answered(session, message.id)
                continue
            await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})

    def holds(self, session_id: str) -> bool:
        return session_id in self.sessions

    async def post(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        """POST /sse/message?sessionId=...: 202, and the answer goes out on the stream."""
        caller: Caller = scope[SCOPE_KEY]
        session = self.sessions.get(session_id_from_query(scope) or "")
        if session is None or not caller.owns(
            user_id=session.caller.user_id, client_id=session.caller.client_id
        ):
            await send_jsonrpc_error(send, 404, SESSION_NOT_FOUND, "Session not found")
            return
        try:
            message = jsonrpc_message_adapter.validate_json(body, by_name=False)
        except ValidationError as exc:
            is_json = not any(err.get("type") == "json_invalid" for err in exc.errors())
            code, text = (
                (INVALID_REQUEST, "Invalid JSON-RPC message") if is_json else (PARSE_ERROR, "Parse error")
            )
            await send_jsonrpc_error(send, 400, code, text)
            return
        if isinstance(message, JSONRPCRequest):
            # In flight until its answer is written on the stream (the drain waits for it).
            session.pending[message.id] += 1
            self._on_call_start()
        elif isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
            # The client gave up on a request: the server owes it no answer any more.
            cancelled = (message.params or {}).get("requestId")
            if isinstance(cancelled, str | int):
                self._answered(session, cancelled)
        await send(
            {"type": "http.response.start", "status": 202, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"Accepted", "more_body": False})
        request = Request(scope, receive)
        try:
            await session.inbound_send.send(
                SessionMessage(message, metadata=ServerMessageMetadata(request_context=request))
            )
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            logger.info("a message arrived for an SSE session that was just ending")
