"""Per-session event stores, so a Streamable HTTP client can resume a stream (Last-Event-ID).

Each session gets a store of its own (`SessionManager` hands one to every new session), so a
client resuming with an event id can only ever be given its own session's events, and the
store goes with its session. Events are kept as JSON text, the last MCP_SSE_REPLAY_EVENTS of
a session for at most MCP_SSE_REPLAY_SECONDS: text is not an object graph the garbage
collector has to walk on every collection, which on a busy worker made keeping them cost a
fifth of its throughput.

The store lives in the worker that owns the session, which is where every request for that
session is served (directly or forwarded), so resumption works from any worker.
"""

from __future__ import annotations

import itertools
import time
from collections import deque

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCMessage, jsonrpc_message_adapter


class SessionEventStore(EventStore):
    def __init__(self, *, max_events: int, max_age_seconds: float) -> None:
        # (sequence number, stream, the message as JSON or None for a priming event, stored at)
        self._events: deque[tuple[int, StreamId, str | None, float]] = deque()
        self._sequence = itertools.count(1)
        self._max_events = max_events
        self._max_age = max_age_seconds

    @property
    def size(self) -> int:
        # Not __len__: the SDK tests `if self._event_store:`, and an empty store must count.
        return len(self._events)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        sequence = next(self._sequence)
        now = time.monotonic()
        data = None if message is None else message.model_dump_json(by_alias=True, exclude_unset=True)
        self._events.append((sequence, stream_id, data, now))
        while len(self._events) > self._max_events or self._events[0][3] < now - self._max_age:
            self._events.popleft()
        return str(sequence)

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        """Send the events of `last_event_id`'s stream that came after it; None if that event
        is not (or no longer) known, so the SDK refuses the resumption."""
        try:
            after = int(last_event_id)
        except ValueError:
            return None
        stream_id: StreamId | None = None
        for sequence, stream, data, _stored in list(self._events):
            if stream_id is None:
                if sequence == after:
                    stream_id = stream
                continue
            if stream == stream_id and data is not None:
                message = jsonrpc_message_adapter.validate_json(data)
                await send_callback(EventMessage(message, str(sequence)))
        return stream_id
