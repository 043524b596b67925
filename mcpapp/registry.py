"""Which worker owns which MCP session.

A stateful session lives in the worker that created it. In production the registry is a
Redis key per session (`<prefix>session:<id>`: the owner's worker id, and the user and client
whose token created it), written when the session opens and deleted when it ends; the owner
refreshes the expiry of its live sessions now and then, and re-writes them all after Redis
comes back (it may have come back empty). With one process (no Redis) there is nothing to
look up: a session is either this worker's or unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from redis.exceptions import RedisError

from .bus import Bus, pack, unpack
from .wire import BackendUnavailable


@dataclass(frozen=True, slots=True)
class SessionEntry:
    owner: str  # the owning worker's id
    user_id: int
    client_id: str
    kind: str  # "sse" or "mcp"


class Registry(Protocol):
    async def claim(self, session_id: str, entry: SessionEntry) -> None: ...
    async def lookup(self, session_id: str) -> SessionEntry | None: ...
    async def forget(self, session_id: str, *, owner: str) -> None: ...
    async def refresh(self, entries: dict[str, SessionEntry]) -> None: ...


class LocalRegistry:
    """One process: every session this worker does not hold is unknown."""

    async def claim(self, session_id: str, entry: SessionEntry) -> None:
        return None

    async def lookup(self, session_id: str) -> SessionEntry | None:
        return None

    async def forget(self, session_id: str, *, owner: str) -> None:
        return None

    async def refresh(self, entries: dict[str, SessionEntry]) -> None:
        return None


class RedisRegistry:
    def __init__(self, bus: Bus, *, ttl_seconds: int) -> None:
        self.bus = bus
        self.ttl = ttl_seconds

    def _key(self, session_id: str) -> str:
        return f"{self.bus.prefix}session:{session_id}"

    @staticmethod
    def _pack(entry: SessionEntry) -> bytes:
        return pack([entry.owner, entry.user_id, entry.client_id, entry.kind])

    async def claim(self, session_id: str, entry: SessionEntry) -> None:
        try:
            await self.bus.client.set(self._key(session_id), self._pack(entry), ex=self.ttl)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable("Redis is unavailable") from exc

    async def lookup(self, session_id: str) -> SessionEntry | None:
        if len(session_id) > 128:
            return None
        try:
            raw = await self.bus.client.get(self._key(session_id))
        except (RedisError, OSError) as exc:
            raise BackendUnavailable("Redis is unavailable") from exc
        if raw is None:
            return None
        owner, user_id, client_id, kind = unpack(raw if isinstance(raw, bytes) else raw.encode())
        return SessionEntry(owner=owner, user_id=int(user_id), client_id=client_id, kind=kind)

    async def forget(self, session_id: str, *, owner: str) -> None:
        """Delete the entry if it still names `owner` (never another worker's claim)."""
        key = self._key(session_id)
        try:
            raw = await self.bus.client.get(key)
            if raw is not None and unpack(raw if isinstance(raw, bytes) else raw.encode())[0] == owner:
                await self.bus.client.delete(key)
        except (RedisError, OSError):
            # Expiry removes it; the session itself is already gone.
            return

    async def refresh(self, entries: dict[str, SessionEntry]) -> None:
        """Re-write every live session of this worker with a fresh expiry."""
        if not entries:
            return
        items = list(entries.items())
        for start in range(0, len(items), 500):
            async with self.bus.client.pipeline(transaction=False) as pipe:
                for session_id, entry in items[start : start + 500]:
                    pipe.set(self._key(session_id), self._pack(entry), ex=self.ttl)
                await pipe.execute()
