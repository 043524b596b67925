"""Raw MCP over HTTP, for tests that look at the wire: status codes, headers, events."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
from typing import Any

import httpx

ACCEPT = "application/json, text/event-stream"


def initialize_body(version: str = "2025-06-18", request_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }


def post_json(url: str, token: str, body: Any, **headers: str) -> httpx.Response:
    """POST a JSON-RPC body to an MCP URL (a /mcp or /sse/message one) with the token."""
    return httpx.post(
        url,
        json=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": ACCEPT,
            "Content-Type": "application/json",
            **headers,
        },
        timeout=30,
    )


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON payloads of the `message` events in an SSE body."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].strip() for line in block.split("\n") if line.startswith("data:")]
        if data and data[0]:
            out.append(json.loads("\n".join(data)))
    return out


class MCPHttp:
    """A Streamable HTTP client that does the bare protocol by hand."""

    def __init__(self, base_url: str, token: str, version: str = "2025-06-18") -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.token = token
        self.version = version
        self.session_id: str | None = None
        self.next_id = 2

    def headers(self, **extra: str) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": ACCEPT,
            "Content-Type": "application/json",
        }
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
            headers["MCP-Protocol-Version"] = self.version
        headers.update(extra)
        return headers

    def post(self, body: Any, **headers: str) -> httpx.Response:
        raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.http.post("/mcp", content=raw, headers=self.headers(**headers))

    def initialize(self) -> httpx.Response:
        response = self.post(initialize_body(self.version))
        assert response.status_code == 200, response.text
        self.session_id = response.headers["mcp-session-id"]
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
        return response

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = self.next_id
        self.next_id += 1
        response = self.post({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
        assert response.status_code == 200, response.text
        answers = [m for m in sse_messages(response.text) if m.get("id") == request_id]
        assert answers, response.text
        return answers[0]

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return self.request("tools/call", {"name": tool, "arguments": arguments})

    def close(self) -> None:
        self.http.close()


class SSEStream:
    """GET /sse read on a thread: events arrive on a queue as (event, data) pairs.

    `end` says how the stream ended once it has: "clean" (the server finished the response),
    "reset" (the connection broke mid-response), "timeout" (nothing arrived for too long) or
    "closed" (this side closed it). `ids` maps each event's data to its SSE `id`, if any.
    """

    def __init__(self, base_url: str, token: str, path: str = "/sse", **headers: str) -> None:
        self.events: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.end: str | None = None
        self.event_ids: list[str] = []
        self.body = ""
        self._closing = False
        self._ready = threading.Event()
        self._client = httpx.Client(base_url=base_url, timeout=httpx.Timeout(30, read=120))
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream", **headers}
        self._path = path
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(20), "the stream did not open"

    def _run(self) -> None:
        try:
            with self._client.stream("GET", self._path, headers=self._headers) as response:
                self._response = response
                self.status = response.status_code
                self.response_headers = dict(response.headers)
                self._ready.set()
                if not self.response_headers.get("content-type", "").startswith("text/event-stream"):
                    self.body = response.read().decode(errors="replace")
                    self.end = "clean"
                    return
                event, data = "message", []
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line.startswith("id:"):
                        self.event_ids.append(line[3:].strip())
                    elif line.startswith(":"):
                        self.events.put(("comment", line[1:].strip()))
                    elif line == "" and data:
                        self.events.put((event, "\n".join(data)))
                        event, data = "message", []
            self.end = "closed" if self._closing else "clean"
        except httpx.TimeoutException:
            self.end = "timeout"
        except httpx.HTTPError:
            self.end = "closed" if self._closing else "reset"
        finally:
            self._ready.set()
            self.events.put(None)

    def next(self, timeout: float = 15, skip_comments: bool = True) -> tuple[str, str] | None:
        while True:
            item = self.events.get(timeout=timeout)
            if item is None or not skip_comments or item[0] != "comment":
                return item

    def next_message(self, timeout: float = 15) -> dict[str, Any]:
        """The next JSON-RPC message (priming events, which carry no data, are skipped)."""
        while True:
            item = self.next(timeout)
            assert item is not None, "the stream ended"
            assert item[0] == "message", item
            if item[1].strip():
                return json.loads(item[1])

    def ended_within(self, seconds: float) -> bool:
        """Whether the stream ended within `seconds` (see `end` for how)."""
        import time

        if self.end is not None:
            return True
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                item = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if item is None:
                return True
        return False

    def close(self) -> None:
        self._closing = True
        response = getattr(self, "_response", None)
        if response is not None:
            # Closing the connection under the reading thread ends it at once.
            stream = response.extensions.get("network_stream")
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._client.close()


def raw_events(response: httpx.Response) -> list[dict[str, str]]:
    """Every SSE event of a streamed response, as its fields (id, event, data, retry)."""
    events: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if fields:
                events.append(fields)
            fields = {}
        elif not line.startswith(":") and ":" in line:
            name, _, value = line.partition(":")
            fields[name] = fields.get(name, "") + value.strip()
    if fields:
        events.append(fields)
    return events


def resume_messages(
    url: str, token: str, client: MCPHttp, last_event_id: str, request_id: int
) -> list[dict[str, Any]]:
    """GET the session's stream again from `last_event_id`: every message up to the answer to
    `request_id`, that answer last."""
    stream = SSEStream(
        url,
        token,
        path="/mcp",
        **{
            "Mcp-Session-Id": client.session_id or "",
            "MCP-Protocol-Version": client.version,
            "Last-Event-ID": last_event_id,
        },
    )
    assert stream.status == 200
    messages = []
    try:
        while True:
            message = stream.next_message(timeout=10)
            messages.append(message)
            if message.get("id") == request_id:
                return messages
    finally:
        stream.close()


def resume(url: str, token: str, client: MCPHttp, last_event_id: str, request_id: int) -> dict[str, Any]:
    """The answer to `request_id`, fetched again from `last_event_id`."""
    return resume_messages(url, token, client, last_event_id, request_id)[-1]


class SSEClient:
    """A legacy (2024-11-05) session by hand: its stream, and JSON-RPC POSTed to its endpoint
    (answered 202; the answer comes on the stream)."""

    def __init__(self, base_url: str, token: str) -> None:
        self.stream = SSEStream(base_url, token)
        assert self.stream.status == 200, self.stream.body
        event = self.stream.next()
        assert event is not None and event[0] == "endpoint", event
        self.endpoint = event[1]
        self.token = token
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.next_id = 2

    def post(self, body: Any) -> httpx.Response:
        return self.http.post(
            self.endpoint,
            content=json.dumps(body),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )

    def answer(self, request_id: Any, timeout: float = 30) -> dict[str, Any]:
        """The answer to `request_id` from the stream (AssertionError if the stream ends first)."""
        while True:
            message = self.stream.next_message(timeout)
            if message.get("id") == request_id:
                return message

    def initialize(self) -> dict[str, Any]:
        assert self.post(initialize_body("2024-11-05")).status_code == 202
        answer = self.answer(1)
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
        return answer

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = self.next_id
        self.next_id += 1
        response = self.post({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
        assert response.status_code == 202, response.text
        return self.answer(request_id)

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return self.request("tools/call", {"name": tool, "arguments": arguments})

    def close(self) -> None:
        self.stream.close()
        self.http.close()
