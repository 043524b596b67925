"""What a person sees when they open an MCP endpoint in a browser instead of a client."""

from __future__ import annotations

from django.conf import settings
from django.template.loader import render_to_string

from .wire import Headers, Scope, Send, send_html


async def endpoint_page(scope: Scope, send: Send, headers: Headers) -> None:
    path = "/sse" if scope["path"].startswith("/sse") else "/mcp"
    body = render_to_string(
        "mcp_endpoint.html",
        {
            "endpoint_url": f"{settings.PUBLIC_URL}{path}",
            "legacy": path == "/sse",
            "server_name": settings.MCP_SERVER_NAME,
            "home_url": f"{settings.PUBLIC_URL}/",
        },
    )
    # Still a 401 with the challenge: a client that asked for HTML gets what it needs too.
    await send_html(send, 401, body, headers)
