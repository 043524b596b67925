"""The legacy HTTP+SSE transport (protocol 2024-11-05), still what many clients speak.

`GET /sse` opens the stream; its first event, `endpoint`, names `/sse/message?sessionId=...`,
where the client POSTs JSON-RPC messages (answered 202); answers go out on the stream as
`message` events. The SDK's low-level server runs each session; this module only moves
messages between HTTP and its streams, with a keep-alive comment every
MCP_KEEPALIVE_SECONDS. A session lives exactly as long as its stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs
from uuid import uuid4

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import jsonrpc_message_adapter
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
)

logger = logging.getLogger(__name__)

MESSAGE_PATH = "/sse/message"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


class SseSession:
    __slots__ = ("caller", "inbound_recv", "inbound_send", "outbound_recv", "outbound_send", "session_id")

    def __init__(self, session_id: str, caller: Caller) -> None:
        self.session_id = session_id
        self.caller = caller
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
    ) -> None:
        self.lowlevel = lowlevel
        self.init_options = lowlevel.create_initialization_options()
        self.registry = registry
        self.worker_id = worker_id
        self.keepalive = keepalive_seconds
        self.sessions: dict[str, SseSession] = {}
        self._on_change = on_change

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
                tg.start_soon(self._run_session, session)
                tg.start_soon(self._watch_client, receive, tg.cancel_scope)
                await self._write(session, send)
                tg.cancel_scope.cancel()
        finally:
            self.sessions.pop(session.session_id, None)
            session.inbound_send.close()
            session.outbound_recv.close()
            self._on_change()
            with anyio.CancelScope(shield=True):
                await self.registry.forget(session.session_id, owner=self.worker_id)

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
                data = outbound.message.model_dump_json(by_alias=True, exclude_unset=True)
                await send(
                    {
                        "type": "http.response.body",
                        "body": f"event: message\ndata: {data}\n\n".encode(),
                        "more_body": True,
                    }
                )
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
