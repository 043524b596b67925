"""What goes over the wire in ASGI: the types, JSON-RPC error codes, and the responses the
MCP front door writes itself (everything else comes from the SDK's transports)."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# JSON-RPC 2.0 error codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Implementation-defined server errors (-32000 to -32099).
SERVER_UNAVAILABLE = -32001  # a backend (database, Redis) or this worker cannot serve now
SESSION_NOT_FOUND = INVALID_REQUEST  # what the SDK answers for an unknown session, kept alike


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower-case bytes), decoded as latin-1."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def jsonrpc_error_body(code: int, message: str, request_id: Any = None, data: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}).encode()


# A top-level "id" whose value is an object, array or boolean: only then is the body parsed.
_SUSPICIOUS_ID = re.compile(rb'"id"\s*:\s*[\[{tf]')


def request_id_problem(body: bytes) -> str | None:
    """Why a JSON-RPC body's id is not allowed, or None. Ids are strings, numbers or null; the
    SDK would take `{"id": {...}}` for a notification and answer 202 with nothing."""
    if not _SUSPICIOUS_ID.search(body):
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None  # the transport's parser reports it
    for message in data if isinstance(data, list) else [data]:
        if isinstance(message, dict) and "id" in message:
            value = message["id"]
            if isinstance(value, bool) or not isinstance(value, str | int | float | type(None)):
                return "The id of a JSON-RPC request must be a string or a number"
    return None


def unfinished_request_events(body: bytes) -> bytes:
    """SSE `message` events answering each request in `body` with a retryable JSON-RPC error:
    for a stream cut before its answer (the worker stopped, the owning worker died), so the
    client learns at once that it should send the request again rather than wait."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return b""
    messages = data if isinstance(data, list) else [data]
    return b"".join(
        unfinished_request_event(message["id"])
        for message in messages
        if isinstance(message, dict) and "method" in message and isinstance(message.get("id"), str | int)
    )


def unfinished_request_event(request_id: str | int) -> bytes:
    """An SSE `message` event answering request `request_id` with a retryable JSON-RPC error."""
    error = jsonrpc_error_body(
        SERVER_UNAVAILABLE, "The server stopped before this request finished; send it again", request_id
    )
    return b"event: message\ndata: " + error + b"\n\n"


async def send_body(
    send: Send, status: int, body: bytes, content_type: bytes, headers: Headers | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"cache-control", b"no-store"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_json(send: Send, status: int, body: bytes, headers: Headers | None = None) -> None:
    await send_body(send, status, body, b"application/json", headers)


async def send_jsonrpc_error(
    send: Send, status: int, code: int, message: str, headers: Headers | None = None
) -> None:
    await send_json(send, status, jsonrpc_error_body(code, message), headers)


async def send_unavailable(send: Send, what: str, *, retry_after: int = 2) -> None:
    """503 with a JSON-RPC error and Retry-After: the client should simply try again."""
    await send_jsonrpc_error(
        send,
        503,
        SERVER_UNAVAILABLE,
        f"{what}; try again in a few seconds",
        [(b"retry-after", str(retry_after).encode())],
    )


async def send_html(send: Send, status: int, body: str, headers: Headers | None = None) -> None:
    await send_body(send, status, body.encode(), b"text/html; charset=utf-8", headers)


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client left or it exceeds `limit` bytes
    (the caller tells those apart by whether it sent a response)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body exceeds {limit} bytes")
        self.limit = limit


class BackendUnavailable(Exception):
    """A backend the request needs (the database, Redis) did not answer; the message names it."""
