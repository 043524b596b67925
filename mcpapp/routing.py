"""The MCP endpoints as a stack of small ASGI layers; Django serves every other path.

OriginHostGuard   Host (421) and Origin (403), CORS and the preflight, methods (405)
  BodyLimit       the body, read once, capped at MCP_MAX_BODY_BYTES (413)
    BearerAuth    the token (401/403/503), the caller on the scope, revocation ends streams
      MCPConsumer serve here or forward to the session's worker
"""

from __future__ import annotations

from typing import Any

from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path, re_path

from .auth import BearerAuth
from .consumers import MCPConsumer
from .guards import BodyLimit, OriginHostGuard


def mcp_endpoint() -> Any:
    return OriginHostGuard(BodyLimit(BearerAuth(MCPConsumer.as_asgi())))


def build_application(django_app: Any) -> ProtocolTypeRouter:
    mcp = mcp_endpoint()
    return ProtocolTypeRouter(
        {
            "http": URLRouter(
                [
                    path("sse", mcp),
                    path("sse/message", mcp),
                    path("mcp", mcp),
                    re_path(r"", django_app),
                ]
            )
        }
    )
