"""The MCP endpoints' Channels consumer: serve the request here, or forward it to its owner.

It sits behind the guard, body and bearer-token layers (mcpapp.routing), so it sees only
authenticated requests with their body read. A request for a session this worker holds, or
one that opens a session, is served here; a request for a session another worker owns is
checked (the session must be the caller's: same user, same client) and forwarded
(mcpapp.tunnel). Whatever happens, the response is finished properly: a backend outage
before the answer started is a 503 JSON-RPC error, and a stream that is cut is ended.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
from channels.consumer import AsyncConsumer

from .guards import BODY_KEY
from .identity import SCOPE_KEY, Caller
from .wire import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    SESSION_NOT_FOUND,
    BackendUnavailable,
    Message,
    Receive,
    Scope,
    Send,
    request_id_problem,
    send_jsonrpc_error,
    send_unavailable,
    unfinished_request_events,
)
from .worker import Worker, get_worker

logger = logging.getLogger(__name__)


class MCPConsumer(AsyncConsumer):
    """Serves /sse, /sse/message and /mcp (one instance per HTTP request)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        progress = {"started": False, "finished": False, "stream": False}
        # Cancelled by the drain once its grace has run out (Worker.requests).
        cut = anyio.CancelScope()

        def unanswered() -> bytes:
            """Errors for the requests of a POST whose event stream is being cut short."""
            if progress["stream"] and scope["method"] == "POST":
                return unfinished_request_events(scope.get(BODY_KEY, b""))
            return b""

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                progress["started"] = True
                await send(message)
                content_type = dict(message.get("headers") or ()).get(b"content-type", b"")
                progress["stream"] = content_type.startswith(b"text/event-stream")
                if (
                    scope["method"] == "GET"
                    and scope["path"] == "/mcp"
                    and content_type.startswith(b"text/event-stream")
                ):
                    # daphne sends the headers with the first body chunk; a comment gets a
                    # standalone stream to the client now rather than at its first event.
                    await send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})
                return
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                progress["finished"] = True
                if cut.cancel_called:  # the transport ends the stream it was made to leave
                    message = {**message, "body": unanswered() + message.get("body", b"")}
            await send(message)

        try:
            worker = await get_worker()
            worker.requests.add(cut)  # the drain cancels these once its grace has run out
            try:
                with cut:
                    await self.serve(worker, scope, receive, tracked_send)
            finally:
                worker.requests.discard(cut)
            if cut.cancelled_caught and not progress["started"]:
                # The drain's grace ran out before this request was answered.
                await send_unavailable(send, "This worker is restarting", retry_after=1)
                progress["started"] = progress["finished"] = True
        except BackendUnavailable as exc:
            if not progress["started"]:
                await send_unavailable(send, str(exc))
                progress["started"] = progress["finished"] = True
        except Exception:
            logger.exception("MCP request failed")
            if not progress["started"]:
                with contextlib.suppress(Exception):
                    await send_jsonrpc_error(send, 500, INTERNAL_ERROR, "Internal error")
                progress["started"] = progress["finished"] = True
        finally:
            if progress["started"] and not progress["finished"]:
                # A stream cut before its end (client gone, token revoked, drain, the owning
                # worker died): a POST's requests get a retryable error, and the response is
                # ended properly so the connection closes instead of hanging.
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": unanswered(), "more_body": False})

    async def serve(self, worker: Worker, scope: Scope, receive: Receive, send: Send) -> None:
        if not worker.serving_requests:
            await send_unavailable(send, "This worker is restarting", retry_after=1)
            return
        if scope["method"] == "POST":
            problem = request_id_problem(scope.get(BODY_KEY, b""))
            if problem:
                await send_jsonrpc_error(send, 400, INVALID_REQUEST, problem)
                return
        caller: Caller = scope[SCOPE_KEY]
        worker.audit.note_use(caller)
        session_id = worker.session_id_of(scope) if scope["path"] != "/sse" else None
        if session_id and not worker.owns(session_id) and worker.tunnel is not None:
            entry = await worker.registry.lookup(session_id)
            if entry is None and worker.bus is not None and worker.bus.settling:
                # Redis came back a moment ago, perhaps empty: the owner may not have put its
                # sessions back yet, so "not found" would be a guess.
                await send_unavailable(send, "Sessions are being restored after a Redis outage")
                return
            if entry is not None and entry.owner != worker.id:
                if not caller.owns(user_id=entry.user_id, client_id=entry.client_id):
                    # Someone else's session: answered as if it did not exist.
                    await send_jsonrpc_error(send, 404, SESSION_NOT_FOUND, "Session not found")
                    return
                if scope["method"] == "GET":
                    await worker.tunnel.forward(entry, session_id, scope, b"", worker.endable(receive), send)
                    return
                async with worker.tracked(scope):
                    await worker.tunnel.forward(
                        entry, session_id, scope, scope.get(BODY_KEY, b""), receive, send
                    )
                return
        await worker.dispatch(scope, receive, send)
