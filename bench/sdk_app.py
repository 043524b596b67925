"""The peers: the `mcp` SDK's own app with one `add` tool, no auth, both transports.

`uvicorn_app` is what a Python user writes: the SDK's Starlette apps side by side, with
the Streamable HTTP app's ASGI lifespan running its session manager.

`daphne_app` is the same app for daphne, which sends no ASGI lifespan: the one addition
is that the session manager is started by the first request (and lives until the process
ends). Nothing else is wrapped, so this is the ceiling of our own server stack.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

Scope = dict[str, Any]
Receive = Any
Send = Any

server: MCPServer[Any] = MCPServer("bench-sdk-peer", log_level="WARNING")


@server.tool()
def add(a: float, b: float) -> float:
    """Add two numbers and return their sum."""
    total = a + b
    return int(total) if total.is_integer() else total


# The SDK's defaults: /mcp for Streamable HTTP, /sse and /messages/ for legacy SSE.
streamable = server.streamable_http_app()
sse = server.sse_app()


async def uvicorn_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan" or scope["path"].startswith("/mcp"):
        await streamable(scope, receive, send)
    else:
        await sse(scope, receive, send)


class SessionManagerOnFirstRequest:
    """Runs the session manager (what the lifespan would do) from the first request on."""

    def __init__(self, app: Any, manager: StreamableHTTPSessionManager) -> None:
        self.app = app
        self.manager = manager
        self.ready: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.ready is None:
            self.ready = asyncio.Event()
            self.task = asyncio.get_running_loop().create_task(self._run(self.ready))
        if not self.ready.is_set():
            await self.ready.wait()
        await self.app(scope, receive, send)

    async def _run(self, ready: asyncio.Event) -> None:
        async with self.manager.run():
            ready.set()
            await asyncio.Event().wait()


daphne_app = SessionManagerOnFirstRequest(uvicorn_app, server.session_manager)
