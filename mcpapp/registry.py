"""Which worker owns which MCP session.

A stateful session lives in the worker that created it. The registry (the Django cache: Redis
in production, so every worker sees it; process memory by default) maps its id to that
worker's channel-layer name and to the user and client whose token created it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from django.conf import settings
from django.core.cache import cache

PREFIX = "mcpapp:session:"


@dataclass(frozen=True)
class SessionEntry:
    owner: str
    user_id: int
    client_id: str
    kind: str  # "sse" or "mcp"


async def session_claim(session_id: str, entry: SessionEntry) -> None:
    await cache.aset(PREFIX + session_id, asdict(entry), settings.MCP_SESSION_IDLE_SECONDS)


async def session_lookup(session_id: str) -> SessionEntry | None:
    raw = await cache.aget(PREFIX + session_id)
    return SessionEntry(**raw) if isinstance(raw, dict) else None


async def session_touch(session_id: str) -> None:
    await cache.atouch(PREFIX + session_id, settings.MCP_SESSION_IDLE_SECONDS)


async def session_forget(session_id: str) -> None:
    await cache.adelete(PREFIX + session_id)
