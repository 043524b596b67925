"""The MCP endpoints as a Channels consumer, in front of the SDK's transports.

One consumer instance per HTTP request. It checks Host and Origin, caps the body, authenticates
the bearer token (every request, not only the first), and then either serves the request in
this worker or, when the session lives in another worker, forwards it there over the channel
layer and relays the answer. A stream stays open only while its token stays valid.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.http.request import validate_host

from oauthapp import services

from . import registry
from .auth import AuthFailure, TokenInfo, authenticate, resource_metadata_url, token_still_valid
from .worker import INVALID_REQUEST, Receive, Scope, Send, get_worker, sdk_user, send_jsonrpc_error

logger = logging.getLogger(__name__)

FORWARD_TIMEOUT_SECONDS = 10
EXPOSED_HEADERS = b"Mcp-Session-Id, WWW-Authenticate, Mcp-Protocol-Version"


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def origin_allowed(origin: str) -> bool:
    """Same origin as PUBLIC_URL, or a loopback origin (local tools such as the Inspector)."""
    if origin == settings.PUBLIC_URL:
        return True
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        return False
    return host in {"localhost", "127.0.0.1", "::1"} or origin in settings.MCP_ALLOWED_ORIGINS


def claims_for(info: TokenInfo) -> dict[str, Any]:
    return {
        "iss": settings.PUBLIC_URL,
        "checksum": info.checksum,
        "mcp_user_id": info.user_id,
        "username": info.username,
        "client_id": info.client_id,
        "client_name": info.client_name,
        "application_id": info.application_id,
        "scopes": list(info.scopes),
        "expires_at": info.expires_at,
    }


class MCPConsumer(AsyncConsumer):
    """Serves /sse, /sse/message and /mcp."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.channel_layer = get_channel_layer()
        self.channel_name = await self.channel_layer.new_channel("mcpreq.")
        try:
            await self.serve(scope, receive, send)
        except Exception:
            logger.exception("MCP request failed")
            # Fails harmlessly if the response had already started.
            with contextlib.suppress(Exception):
                await send_jsonrpc_error(send, 500, -32603, "Internal error")

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        origin = header(scope, b"origin")
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None:
            if not origin_allowed(origin):
                await send_jsonrpc_error(send, 403, INVALID_REQUEST, "Origin not allowed")
                return
            cors = [
                (b"access-control-allow-origin", origin.encode()),
                (b"access-control-expose-headers", EXPOSED_HEADERS),
                (b"vary", b"Origin"),
            ]
        host = (header(scope, b"host") or "").rsplit(":", 1)[0].strip("[]")
        if not validate_host(host, settings.ALLOWED_HOSTS):
            await send_jsonrpc_error(send, 421, INVALID_REQUEST, "Host not allowed")
            return
        if method == "OPTIONS":
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        *cors,
                        (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
                        (
                            b"access-control-allow-headers",
                            b"Authorization, Content-Type, Accept, Mcp-Session-Id, Mcp-Protocol-Version, "
                            b"Last-Event-ID, Mcp-Method, Mcp-Name",
                        ),
                        (b"access-control-max-age", b"600"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        allowed = {"/sse": {"GET"}, "/sse/message": {"POST"}, "/mcp": {"GET", "POST", "DELETE"}}[path]
        if method not in allowed:
            # mcp-remote tries Streamable HTTP at the URL first and falls back to SSE on 405.
            allow = ", ".join(sorted(allowed)).encode()
            await send_jsonrpc_error(
                send, 405, INVALID_REQUEST, "Method not allowed", [(b"allow", allow), *cors]
            )
            return

        body = await self.read_body(receive, send, cors)
        if body is None:
            return

        result = await authenticate(scope)
        if isinstance(result, AuthFailure):
            await self.refuse(send, result, cors)
            return
        info = result
        scope = {**scope, "user": sdk_user(claims_for(info))}
        await self.note_use(info)

        replayed = False

        async def guarded_receive() -> dict[str, Any]:
            """The request body once, then the client's disconnect, or a fake one as soon as the
            token that authorised this (possibly long-lived) request stops being valid."""
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            while True:
                with anyio.move_on_after(settings.MCP_AUTH_RECHECK_SECONDS):
                    return await receive()
                if not await token_still_valid(info):
                    logger.info("closing an MCP stream: its token is no longer valid")
                    return {"type": "http.disconnect"}

        progress = {"started": False, "finished": False}

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                progress["started"] = True
                if cors:
                    message = {**message, "headers": [*message.get("headers", []), *cors]}
                await send(message)
                content_type = dict(message.get("headers") or []).get(b"content-type", b"")
                if content_type.startswith(b"text/event-stream"):
                    # daphne sends the headers with the first body chunk; a comment gets the
                    # stream to the client now rather than at the first event or ping.
                    await send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})
                return
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                progress["finished"] = True
            await send(message)

        try:
            await self.route(scope, info, guarded_receive, send_with_cors, body)
        finally:
            if progress["started"] and not progress["finished"]:
                # A stream the transport abandoned (client gone, token revoked): end it
                # properly so the server closes the connection instead of leaving it hanging.
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def route(
        self, scope: Scope, info: TokenInfo, guarded_receive: Receive, send_with_cors: Send, body: bytes
    ) -> None:
        path = scope["path"]

        worker = await get_worker()
        if path == "/sse":
            await worker.sse_stream(scope, guarded_receive, send_with_cors)
            return
        session_id = self.session_id_of(scope)
        if session_id and not worker.owns(session_id):
            entry = await registry.session_lookup(session_id)
            if entry is not None and entry.owner != worker.channel:
                if entry.user_id != info.user_id or entry.client_id != info.client_id:
                    await send_jsonrpc_error(send_with_cors, 404, INVALID_REQUEST, "Session not found")
                    return
                await self.forward(entry, session_id, scope, body, guarded_receive, send_with_cors)
                return
        await worker.dispatch_local(scope, guarded_receive, send_with_cors)

    @staticmethod
    async def note_use(info: TokenInfo) -> None:
        """Keep "last used" current for operators and the connected-apps page, at most once a minute."""
        key = services.client_use_key(application_id=info.application_id, user_id=info.user_id)
        if await cache.aadd(key, 1, services.LAST_USED_GRANULARITY_SECONDS):
            await database_sync_to_async(services.client_mark_used_now)(
                application_id=info.application_id, user_id=info.user_id
            )

    @staticmethod
    def session_id_of(scope: Scope) -> str | None:
        if scope["path"] == "/sse/message":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            return (query.get("sessionId") or query.get("session_id") or [None])[0]
        return header(scope, b"mcp-session-id")

    async def read_body(self, receive: Receive, send: Send, cors: list[tuple[bytes, bytes]]) -> bytes | None:
        limit = settings.MCP_MAX_BODY_BYTES
        declared = header(self.scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await send_jsonrpc_error(send, 413, INVALID_REQUEST, f"Request body exceeds {limit} bytes", cors)
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_jsonrpc_error(
                    send, 413, INVALID_REQUEST, f"Request body exceeds {limit} bytes", cors
                )
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def refuse(self, send: Send, failure: AuthFailure, cors: list[tuple[bytes, bytes]]) -> None:
        body: dict[str, Any] = {
            "error": failure.error or "unauthorized",
            "error_description": failure.description,
        }
        challenge = failure.www_authenticate(resource_metadata_url(self.scope["path"]))
        await send(
            {
                "type": "http.response.start",
                "status": failure.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", challenge.encode()),
                    (b"cache-control", b"no-store"),
                    *cors,
                ],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    async def forward(
        self,
        entry: registry.SessionEntry,
        session_id: str,
        scope: Scope,
        body: bytes,
        receive: Receive,
        send: Send,
    ) -> None:
        """Hand the request to the worker that owns the session and relay its answer."""
        layer = self.channel_layer
        claims = scope["user"].access_token.claims
        await layer.send(
            entry.owner,
            {
                "type": "mcp.tunnel.request",
                "reply": self.channel_name,
                "scope": {
                    "method": scope["method"],
                    "path": scope["path"],
                    "query_string": scope.get("query_string", b""),
                    "headers": [[k, v] for k, v in scope["headers"]],
                    "claims": claims,
                },
                "body": body,
            },
        )
        peer: str | None = None
        me = self.channel_name
        # Receives on the channel layer are never cancelled (channels_redis turns a cancelled
        # read into an error): the timeout and the client's disconnect arrive as messages.
        async with anyio.create_task_group() as tg:

            async def watch_client() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        await layer.send(me, {"type": "mcp.tunnel.client_gone"})
                        return

            async def deadline() -> None:
                await anyio.sleep(FORWARD_TIMEOUT_SECONDS)
                await layer.send(me, {"type": "mcp.tunnel.timeout"})

            tg.start_soon(watch_client)
            tg.start_soon(deadline)
            while True:
                event = await layer.receive(me)
                kind = event.get("type")
                if kind == "mcp.tunnel.timeout":
                    if peer is not None:
                        continue
                    # The owner never answered: its worker is gone, and the session with it.
                    await registry.session_forget(session_id)
                    await send_jsonrpc_error(send, 404, INVALID_REQUEST, "Session not found")
                    break
                if kind == "mcp.tunnel.client_gone":
                    if peer:
                        await layer.send(peer, {"type": "mcp.tunnel.disconnect"})
                    break
                if kind != "mcp.tunnel.send":
                    continue
                peer = event["peer"]
                message = event["message"]
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [(bytes(k), bytes(v)) for k, v in message["headers"]]}
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    break
            tg.cancel_scope.cancel()
