"""The per-process half of the MCP server: sessions this worker owns, and the forwarding link.

Each daphne process starts one `Worker` on its first MCP request. It owns:
- the SDK's Streamable HTTP session manager (sessions, SSE/JSON answers, resumption, the
  stateless 2026-07-28 protocol), fed by `dispatch_local`;
- the legacy SSE sessions opened here;
- a channel on the channel layer on which other workers forward requests for sessions
  this worker owns. A forwarded request is served exactly like a local one, and every ASGI
  message of the answer travels back to the worker that holds the client's connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs
from uuid import uuid4

import anyio
from channels.layers import get_channel_layer
from django.conf import settings
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken as SDKAccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import jsonrpc_message_adapter
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.requests import Request

from . import registry
from .events import MemoryEventStore
from .server import build_server

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600


def jsonrpc_error_body(code: int, message: str, request_id: Any = None) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    ).encode()


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_jsonrpc_error(
    send: Send, status: int, code: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_json(send, status, jsonrpc_error_body(code, message), headers)


def sdk_user(claims: dict[str, Any]) -> AuthenticatedUser:
    """The SDK's view of our caller: sessions are bound to (client, issuer, subject)."""
    return AuthenticatedUser(
        SDKAccessToken(
            token=claims["checksum"],
            client_id=claims["client_id"],
            scopes=list(claims["scopes"]),
            expires_at=int(claims["expires_at"]),
            subject=str(claims["mcp_user_id"]),
            claims=claims,
        )
    )


@dataclass
class SseSession:
    """One legacy (2024-11-05) SSE session: the stream and the server task share this worker."""

    session_id: str
    claims: dict[str, Any]
    inbound_send: Any = None
    inbound_recv: Any = None
    outbound_send: Any = None
    outbound_recv: Any = None

    def __post_init__(self) -> None:
        self.inbound_send, self.inbound_recv = anyio.create_memory_object_stream[Any](64)
        self.outbound_send, self.outbound_recv = anyio.create_memory_object_stream[Any](64)


class Worker:
    def __init__(self) -> None:
        self.channel: str = ""
        self.layer: Any = None
        self.server = build_server()
        self.manager = StreamableHTTPSessionManager(
            app=self.server._lowlevel_server,
            event_store=MemoryEventStore(),
            json_response=False,
            stateless=False,
            # Host and Origin are checked in front of this, against PUBLIC_URL.
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            session_idle_timeout=settings.MCP_SESSION_IDLE_SECONDS,
            max_request_body_size=settings.MCP_MAX_BODY_BYTES,
        )
        self.sse_sessions: dict[str, SseSession] = {}
        self._started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def ensure_started(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._main())
        await self._started.wait()

    async def _main(self) -> None:
        try:
            await self._run()
        except BaseException:
            logger.exception("the MCP worker stopped")
            raise

    async def _run(self) -> None:
        self.layer = get_channel_layer()
        self.channel = await self.layer.new_channel("mcpworker.")
        async with self.manager.run(), anyio.create_task_group() as tg:
            self._started.set()
            while True:
                message = await self.layer.receive(self.channel)
                if message.get("type") == "mcp.tunnel.request":
                    tg.start_soon(self._serve_forwarded_safely, message)

    async def _serve_forwarded_safely(self, message: dict[str, Any]) -> None:
        try:
            await self._serve_forwarded(message)
        except Exception:
            logger.exception("could not serve a forwarded MCP request")

    # --- requests served here -----------------------------------------------------------------

    def owns(self, session_id: str) -> bool:
        return session_id in self.sse_sessions or session_id in self.manager._server_instances

    async def dispatch_local(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/sse/message":
            await self.sse_post(scope, receive, send)
        else:
            await self.mcp_request(scope, receive, send)

    async def mcp_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        claims = scope["user"].access_token.claims

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                session_id = headers.get(b"mcp-session-id")
                status = message["status"]
                if session_id and status < 400 and scope["method"] == "POST":
                    await registry.session_claim(
                        session_id.decode(),
                        registry.SessionEntry(
                            owner=self.channel,
                            user_id=int(claims["mcp_user_id"]),
                            client_id=claims["client_id"],
                            kind="mcp",
                        ),
                    )
                requested = dict(scope["headers"]).get(b"mcp-session-id")
                if requested and (status == 404 or (scope["method"] == "DELETE" and status < 300)):
                    await registry.session_forget(requested.decode())
            await send(message)

        await self.manager.handle_request(scope, receive, watch)

    # --- legacy SSE ----------------------------------------------------------------------------

    async def sse_stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /sse: the stream, whose first event names where to POST messages."""
        claims = scope["user"].access_token.claims
        session = SseSession(session_id=uuid4().hex, claims=claims)
        self.sse_sessions[session.session_id] = session
        await registry.session_claim(
            session.session_id,
            registry.SessionEntry(
                owner=self.channel,
                user_id=int(claims["mcp_user_id"]),
                client_id=claims["client_id"],
                kind="sse",
            ),
        )
        lowlevel = self.server._lowlevel_server

        async def events() -> AsyncIterator[dict[str, str]]:
            yield {"event": "endpoint", "data": f"/sse/message?sessionId={session.session_id}"}
            async for outbound in session.outbound_recv:
                yield {
                    "event": "message",
                    "data": outbound.message.model_dump_json(by_alias=True, exclude_unset=True),
                }

        try:
            async with anyio.create_task_group() as tg:

                async def run_server() -> None:
                    await lowlevel.run(
                        session.inbound_recv,
                        session.outbound_send,
                        lowlevel.create_initialization_options(),
                    )

                tg.start_soon(run_server)
                await EventSourceResponse(
                    events(), ping=settings.MCP_KEEPALIVE_SECONDS, headers={"Cache-Control": "no-store"}
                )(scope, receive, send)
                tg.cancel_scope.cancel()
        finally:
            self.sse_sessions.pop(session.session_id, None)
            await registry.session_forget(session.session_id)

    async def sse_post(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /sse/message?sessionId=...: 202, and the answer goes out on the stream."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        session_id = (query.get("sessionId") or query.get("session_id") or [""])[0]
        session = self.sse_sessions.get(session_id)
        claims = scope["user"].access_token.claims
        if (
            session is None
            or session.claims["mcp_user_id"] != claims["mcp_user_id"]
            or (session.claims["client_id"] != claims["client_id"])
        ):
            await send_jsonrpc_error(send, 404, INVALID_REQUEST, "Session not found")
            return
        request = Request(scope, receive)
        body = await request.body()
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
        await registry.session_touch(session_id)
        await session.inbound_send.send(
            SessionMessage(message, metadata=ServerMessageMetadata(request_context=request))
        )

    # --- forwarding between workers ------------------------------------------------------------

    async def _serve_forwarded(self, message: dict[str, Any]) -> None:
        """Serve a request another worker forwarded, streaming the answer back to it."""
        reply = message["reply"]
        peer = await self.layer.new_channel("mcppeer.")
        portable = message["scope"]
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "http",
            "method": portable["method"],
            "path": portable["path"],
            "raw_path": portable["path"].encode(),
            "root_path": "",
            "query_string": portable["query_string"],
            "headers": [(bytes(k), bytes(v)) for k, v in portable["headers"]],
            "client": None,
            "server": None,
            "user": sdk_user(portable["claims"]),
        }
        body: bytes = message["body"]
        disconnected = anyio.Event()
        body_given = False

        async def receive() -> dict[str, Any]:
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(asgi_message: dict[str, Any]) -> None:
            await self.layer.send(reply, {"type": "mcp.tunnel.send", "message": asgi_message, "peer": peer})

        async def listen() -> None:
            # Receives on the channel layer are never cancelled (channels_redis turns a
            # cancelled read into an error); the loop ends on a message instead.
            while True:
                event = await self.layer.receive(peer)
                if event.get("type") in {"mcp.tunnel.disconnect", "mcp.tunnel.done"}:
                    disconnected.set()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            try:
                await self.dispatch_local(scope, receive, send)
            except Exception:
                logger.exception("forwarded MCP request failed")
            finally:
                with anyio.CancelScope(shield=True):
                    await self.layer.send(peer, {"type": "mcp.tunnel.done"})


_worker: Worker | None = None


async def get_worker() -> Worker:
    global _worker
    if _worker is None:
        _worker = Worker()
    await _worker.ensure_started()
    return _worker
