"""The first layers in front of the MCP transports: Host and Origin, CORS, methods, body size.

`OriginHostGuard` refuses what must never reach a session (a foreign Host: 421, DNS
rebinding; a foreign Origin: 403), answers the CORS preflight itself, refuses methods a path
does not serve (405, which is what makes mcp-remote fall back from Streamable HTTP to SSE),
and adds the CORS headers to every answer for an allowed browser origin, refusals included.
`BodyLimit` reads the body up to MCP_MAX_BODY_BYTES (413 past it) and hands it on.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import validate_host

from .metrics import METRICS
from .observability import REQUEST_ID, request_id_from
from .wire import (
    INVALID_REQUEST,
    ASGIApp,
    BodyTooLarge,
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_jsonrpc_error,
)

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
EXPOSED_HEADERS = b"Mcp-Session-Id, WWW-Authenticate, Mcp-Protocol-Version"
ALLOWED_HEADERS = (
    b"Authorization, Content-Type, Accept, Mcp-Session-Id, Mcp-Protocol-Version, "
    b"Last-Event-ID, Mcp-Method, Mcp-Name"
)
METHODS: dict[str, frozenset[str]] = {
    "/sse": frozenset({"GET"}),
    "/sse/message": frozenset({"POST"}),
    "/mcp": frozenset({"GET", "POST", "DELETE"}),
}
BODY_KEY = "mcp.body"


def origin_allowed(origin: str) -> bool:
    """Same origin as PUBLIC_URL, a loopback origin (local tools such as the Inspector), or one
    listed in MCP_ALLOWED_ORIGINS."""
    if origin == settings.PUBLIC_URL or origin in settings.MCP_ALLOWED_ORIGINS:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in {"http", "https"} and parts.hostname in LOOPBACK_HOSTS


def host_allowed(scope: Scope) -> bool:
    host = header(scope, b"host") or ""
    known = _hosts_seen.get(host)
    if known is None:
        # "[::1]:8787" or "localhost:8787"
        name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        known = bool(name) and validate_host(name, settings.ALLOWED_HOSTS)
        if len(_hosts_seen) < 256:  # Host is the client's to choose: a bounded memo
            _hosts_seen[host] = known
    return known


_hosts_seen: dict[str, bool] = {}


def cors_headers(origin: str) -> Headers:
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", EXPOSED_HEADERS),
        (b"vary", b"Origin"),
    ]


class OriginHostGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        status = {"code": 0}
        request_id = request_id_from(header(scope, b"x-request-id"))
        REQUEST_ID.set(request_id)
        scope = {**scope, "mcp.request_id": request_id}
        started = time.perf_counter()

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                if method != "GET":  # a stream's lifetime is not a latency
                    METRICS.latency.labels(endpoint=path).observe(time.perf_counter() - started)
                message = {
                    **message,
                    "headers": [*message.get("headers", ()), (b"x-request-id", request_id.encode())],
                }
            await send(message)

        try:
            await self._guard(scope, receive, send_counted, path, method)
        finally:
            METRICS.requests.labels(endpoint=path, method=method, status=str(status["code"] or 499)).inc()

    async def _guard(self, scope: Scope, receive: Receive, send: Send, path: str, method: str) -> None:
        origin = header(scope, b"origin")
        cors: Headers = []
        if origin is not None:
            if not origin_allowed(origin):
                await send_jsonrpc_error(send, 403, INVALID_REQUEST, "Origin not allowed")
                return
            cors = cors_headers(origin)
        if not host_allowed(scope):
            await send_jsonrpc_error(send, 421, INVALID_REQUEST, "Host not allowed", cors)
            return
        if method == "OPTIONS":
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        *cors,
                        (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
                        (b"access-control-allow-headers", ALLOWED_HEADERS),
                        (b"access-control-max-age", b"600"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        allowed = METHODS[path]
        if method not in allowed:
            allow = ", ".join(sorted(allowed)).encode()
            await send_jsonrpc_error(
                send, 405, INVALID_REQUEST, "Method not allowed", [(b"allow", allow), *cors]
            )
            return
        if not cors:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *cors]}
            await send(message)

        await self.app(scope, receive, send_with_cors)


class BodyLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = settings.MCP_MAX_BODY_BYTES
        declared = header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await send_jsonrpc_error(send, 413, INVALID_REQUEST, f"Request body exceeds {limit} bytes")
            return
        try:
            body = await read_body(receive, limit)
        except BodyTooLarge as exc:
            await send_jsonrpc_error(send, 413, INVALID_REQUEST, str(exc))
            return
        if body is None:  # the client left before sending it all
            return
        given = False

        async def replay() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, BODY_KEY: body}, replay, send)
