"""An in-memory event store so a Streamable HTTP client can resume a stream (Last-Event-ID).

Events live in the worker that owns the session, which is where every request for that
session is served (directly or forwarded), so resumption works from any worker.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCMessage


class MemoryEventStore(EventStore):
    def __init__(self, max_events: int = 10_000) -> None:
        self._events: OrderedDict[EventId, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()
        self._order: deque[EventId] = deque()
        self._ids = itertools.count(1)
        self._max = max_events

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = f"{next(self._ids)}"
        self._events[event_id] = (stream_id, message)
        self._order.append(event_id)
        while len(self._order) > self._max:
            self._events.pop(self._order.popleft(), None)
        return event_id

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        if last_event_id not in self._events:
            return None
        stream_id = self._events[last_event_id][0]
        found = False
        for event_id, (event_stream, message) in list(self._events.items()):
            if found and event_stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
            if event_id == last_event_id:
                found = True
        return stream_id
