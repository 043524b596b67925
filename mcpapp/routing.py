"""Routes the MCP endpoints to their consumer; Django serves every other path."""

from __future__ import annotations

from typing import Any

from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path, re_path

from .consumers import MCPConsumer


def build_application(django_app: Any) -> ProtocolTypeRouter:
    mcp = MCPConsumer.as_asgi()
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
