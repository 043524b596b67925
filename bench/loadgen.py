"""The load generator: MCP clients over raw asyncio sockets with h11, one per session.

Every server is driven by exactly this code. It speaks both transports by hand (nothing of
the server under test, and no SDK client, whose own cost would swamp the server's):

- legacy SSE (2024-11-05): GET /sse, the `endpoint` event, JSON-RPC POSTed there (202),
  answers read as `message` events from the stream;
- Streamable HTTP (2025-06-18): POST initialize (keeps Mcp-Session-Id), the
  `notifications/initialized` notification, then each tools/call POSTed and answered in
  its response body as an event stream or as JSON.

Every answer is checked: the JSON-RPC id, no error, and the `add` result equal to the sum
the client asked for. h11 (the HTTP/1.1 state machine uvicorn and httpx are built on) keeps
each connection alive and costs a few tens of microseconds per call; httpx on top would cost
more than the servers under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11

PROTOCOL_SSE = "2024-11-05"
PROTOCOL_STREAMABLE = "2025-06-18"
TIMEOUT = 30.0
CLIENT_INFO = {"name": "bench", "version": "1"}


class CheckFailed(Exception):
    """An answer that is not what a correct server sends (status, id, error, wrong sum)."""


@dataclass(frozen=True)
class Target:
    """Where a server listens and how to reach its two transports."""

    host: str
    port: int
    token: str | None = None  # a bearer token, for our server; the SDK peers run without auth
    sse_path: str = "/sse"
    mcp_path: str = "/mcp"

    def headers(self, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
        headers = [(b"host", f"{self.host}:{self.port}".encode())]
        if self.token:
            headers.append((b"authorization", b"Bearer " + self.token.encode()))
        headers.extend(extra)
        return headers


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closed the last one."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.h11 = h11.Connection(our_role=h11.CLIENT)

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.target.host, self.target.port), TIMEOUT
        )
        self.h11 = h11.Connection(our_role=h11.CLIENT)

    async def _send(self, method: bytes, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if self.writer is None or self.h11.our_state is h11.MUST_CLOSE or self.h11.our_state is h11.CLOSED:
            await self.close()
            await self.connect()
        assert self.writer is not None
        if body or method == b"POST":
            headers = [*headers, (b"content-length", str(len(body)).encode())]
        wire = self.h11.send(h11.Request(method=method, target=path.encode(), headers=headers)) or b""
        if body:
            wire += self.h11.send(h11.Data(data=body)) or b""
        wire += self.h11.send(h11.EndOfMessage()) or b""
        self.writer.write(wire)

    async def _next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                assert self.reader is not None
                self.h11.receive_data(await self.reader.read(65536))
                continue
            return event

    async def _response_start(self) -> h11.Response:
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.ConnectionClosed):
                raise CheckFailed("the server closed the connection before answering")

    def _finish_cycle(self) -> None:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()

    async def request(
        self, method: bytes, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> Response:
        await self._send(method, path, headers, body)
        start = await self._response_start()
        parts: list[bytes] = []
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        self._finish_cycle()
        return Response(start.status_code, dict(start.headers), b"".join(parts))

    async def open_stream(self, method: bytes, path: str, headers: list[tuple[bytes, bytes]]) -> Response:
        """Send a request and return once the response head is in; read the body with
        `read_chunk`."""
        await self._send(method, path, headers, b"")
        start = await self._response_start()
        return Response(start.status_code, dict(start.headers), b"")

    async def read_chunk(self) -> bytes | None:
        """The next piece of a streamed body, or None once it ended."""
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return None

    async def read_rest(self) -> bytes:
        parts = []
        while (chunk := await self.read_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 5)


class EventParser:
    """text/event-stream parsing for bodies that arrive in arbitrary pieces."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        text = self.pending + data
        held = b""
        if text.endswith(b"\r"):  # maybe half of a \r\n
            text, held = text[:-1], b"\r"
        blocks = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n\n")
        self.pending = blocks.pop() + held
        events = []
        for block in blocks:
            name, data_lines = "message", []
            for line in block.decode().split("\n"):
                if line.startswith("data:"):
                    data_lines.append(line[6:] if line.startswith("data: ") else line[5:])
                elif line.startswith("event:"):
                    name = line[6:].strip()
            if data_lines:
                events.append((name, "\n".join(data_lines)))
        return events


def rpc(method: str, params: dict[str, Any] | None = None, request_id: int | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if request_id is not None:
        message["id"] = request_id
    return json.dumps(message).encode()


def initialize_params(version: str) -> dict[str, Any]:
    return {"protocolVersion": version, "capabilities": {}, "clientInfo": CLIENT_INFO}


def check_result(message: dict[str, Any], request_id: int) -> dict[str, Any]:
    if message.get("id") != request_id:
        raise CheckFailed(f"answer to id {message.get('id')!r}, expected {request_id}")
    if "error" in message:
        raise CheckFailed(f"JSON-RPC error: {json.dumps(message['error'])[:300]}")
    result = message.get("result")
    if not isinstance(result, dict):
        raise CheckFailed(f"no result: {json.dumps(message)[:300]}")
    return result


def check_sum(message: dict[str, Any], request_id: int, expected: int) -> None:
    result = check_result(message, request_id)
    if result.get("isError"):
        raise CheckFailed(f"tool error: {json.dumps(result)[:300]}")
    structured = result.get("structuredContent")
    try:
        value = structured["result"] if structured else float(result["content"][0]["text"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise CheckFailed(f"no sum in {json.dumps(result)[:300]}") from exc
    if value != expected:
        raise CheckFailed(f"add answered {value!r}, expected {expected}")


def add_params(a: int, b: int) -> dict[str, Any]:
    return {"name": "add", "arguments": {"a": a, "b": b}}


class Session:
    """One MCP session: `open` until usable, `call` add, `close`."""

    transport = ""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.next_id = 1

    async def open(self) -> None:
        raise NotImplementedError

    async def call(self, a: int, b: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SseSession(Session):
    """Legacy SSE: the stream carries every answer; POSTs are acknowledged with 202."""

    transport = "sse"

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self.stream = HttpConnection(target)
        self.post: HttpConnection | None = None
        self.endpoint: asyncio.Future[str] | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader: asyncio.Task[None] | None = None
        self.ended: str | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.endpoint = loop.create_future()
        await self.stream.connect()
        head = await asyncio.wait_for(
            self.stream.open_stream(
                b"GET", self.target.sse_path, self.target.headers((b"accept", b"text/event-stream"))
            ),
            TIMEOUT,
        )
        if head.status != 200:
            body = await asyncio.wait_for(self.stream.read_rest(), TIMEOUT)
            raise CheckFailed(f"GET {self.target.sse_path} answered {head.status}: {body[:300]!r}")
        self.reader = loop.create_task(self._read_events())
        path = await asyncio.wait_for(self.endpoint, TIMEOUT)
        self.message_path = path if path.startswith("/") else f"/{path}"
        self.post = HttpConnection(self.target)
        await self.post.connect()
        request_id = self._id()
        answer = await self._request(
            rpc("initialize", initialize_params(PROTOCOL_SSE), request_id), request_id
        )
        if "protocolVersion" not in check_result(answer, request_id):
            raise CheckFailed(f"initialize answered {answer}")
        await self._post(rpc("notifications/initialized"))

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    async def _read_events(self) -> None:
        parser = EventParser()
        try:
            while (chunk := await self.stream.read_chunk()) is not None:
                for name, data in parser.feed(chunk):
                    if name == "endpoint":
                        if self.endpoint is not None and not self.endpoint.done():
                            self.endpoint.set_result(data.strip())
                    elif name == "message":
                        message = json.loads(data)
                        waiter = self.pending.pop(message.get("id", -1), None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(message)
            self.ended = "the stream ended"
        except (OSError, h11.ProtocolError, ValueError) as exc:
            self.ended = f"the stream broke: {exc!r}"
        finally:
            failure = CheckFailed(self.ended or "the stream was closed")
            if self.endpoint is not None and not self.endpoint.done():
                self.endpoint.set_exception(failure)
            for waiter in self.pending.values():
                if not waiter.done():
                    waiter.set_exception(failure)
            self.pending.clear()

    async def _post(self, body: bytes) -> None:
        assert self.post is not None
        headers = self.target.headers((b"content-type", b"application/json"))
        async with asyncio.timeout(TIMEOUT):
            response = await self.post.request(b"POST", self.message_path, headers, body)
        if response.status != 202:
            raise CheckFailed(f"POST {self.message_path} answered {response.status}: {response.body[:300]!r}")

    async def _request(self, body: bytes, request_id: int) -> dict[str, Any]:
        if self.ended:
            raise CheckFailed(self.ended)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = waiter
        try:
            await self._post(body)
            async with asyncio.timeout(TIMEOUT):
                return await waiter
        finally:
            self.pending.pop(request_id, None)

    async def call(self, a: int, b: int) -> None:
        request_id = self._id()
        answer = await self._request(rpc("tools/call", add_params(a, b), request_id), request_id)
        check_sum(answer, request_id, a + b)

    async def drop_post_connection(self) -> None:
        """Leave only the stream open: an idle session, as a client holds it between calls."""
        if self.post is not None:
            await self.post.close()

    async def close(self) -> None:
        if self.post is not None:
            await self.post.close()
        await self.stream.close()
        if self.reader is not None:
            self.reader.cancel()
            # It ends with the stream; how it ended is in self.ended.
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader


class StreamableSession(Session):
    """Streamable HTTP: each POST is answered in its own response body."""

    transport = "streamable"

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self.http = HttpConnection(target)
        self.session_id: bytes | None = None

    def _headers(self) -> list[tuple[bytes, bytes]]:
        extra = [
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream"),
        ]
        if self.session_id is not None:
            extra += [
                (b"mcp-session-id", self.session_id),
                (b"mcp-protocol-version", PROTOCOL_STREAMABLE.encode()),
            ]
        return self.target.headers(*extra)

    async def _post(self, body: bytes) -> Response:
        async with asyncio.timeout(TIMEOUT):
            return await self.http.request(b"POST", self.target.mcp_path, self._headers(), body)

    async def _request(self, body: bytes, request_id: int) -> tuple[Response, dict[str, Any]]:
        response = await self._post(body)
        if response.status != 200:
            raise CheckFailed(
                f"POST {self.target.mcp_path} answered {response.status}: {response.body[:300]!r}"
            )
        kind = response.headers.get(b"content-type", b"")
        if kind.startswith(b"text/event-stream"):
            messages = [
                json.loads(data)
                for name, data in EventParser().feed(response.body + b"\n\n")
                if name == "message"
            ]
        elif kind.startswith(b"application/json"):
            messages = [json.loads(response.body)]
        else:
            raise CheckFailed(f"answer of type {kind!r}: {response.body[:300]!r}")
        for message in messages:
            if message.get("id") == request_id:
                return response, message
        raise CheckFailed(f"no answer to id {request_id} in {response.body[:300]!r}")

    async def open(self) -> None:
        await self.http.connect()
        self.next_id += 1
        response, answer = await self._request(
            rpc("initialize", initialize_params(PROTOCOL_STREAMABLE), self.next_id), self.next_id
        )
        if "protocolVersion" not in check_result(answer, self.next_id):
            raise CheckFailed(f"initialize answered {answer}")
        self.session_id = response.headers.get(b"mcp-session-id")
        if not self.session_id:
            raise CheckFailed("initialize answered without Mcp-Session-Id")
        notified = await self._post(rpc("notifications/initialized"))
        if notified.status != 202:
            raise CheckFailed(
                f"notifications/initialized answered {notified.status}: {notified.body[:300]!r}"
            )

    async def call(self, a: int, b: int) -> None:
        self.next_id += 1
        _, answer = await self._request(rpc("tools/call", add_params(a, b), self.next_id), self.next_id)
        check_sum(answer, self.next_id, a + b)

    async def close(self) -> None:
        if self.session_id is not None:
            # Ending the session is courtesy; a server that fails it is seen in what it leaves behind.
            with contextlib.suppress(OSError, TimeoutError, h11.ProtocolError, CheckFailed):
                async with asyncio.timeout(TIMEOUT):
                    await self.http.request(b"DELETE", self.target.mcp_path, self._headers())
        await self.http.close()


SESSIONS: dict[str, type[Session]] = {"sse": SseSession, "streamable": StreamableSession}


# --- measurements -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of unsorted values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Errors:
    count: int = 0
    samples: list[str] = field(default_factory=list)

    def add(self, exc: BaseException) -> None:
        self.count += 1
        if len(self.samples) < 5:
            self.samples.append(f"{type(exc).__name__}: {exc}"[:300])


async def close_all(sessions: list[Session]) -> None:
    await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True)


async def open_all(sessions: list[Session], errors: Errors) -> list[Session]:
    """Open sessions concurrently; the ones that failed are counted and left out."""
    results = await asyncio.gather(*(session.open() for session in sessions), return_exceptions=True)
    usable = []
    for session, result in zip(sessions, results, strict=True):
        if isinstance(result, BaseException):
            errors.add(result)
            await session.close()
        else:
            usable.append(session)
    return usable


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Window:
    """CPU spent inside the timed window, by the server (read from outside) and by us."""

    server_cpu: Callable[[], float]
    server_seconds: float = 0.0
    generator_seconds: float = 0.0

    def open(self) -> None:
        self.server_seconds, self.generator_seconds = -self.server_cpu(), -own_cpu_seconds()

    def close(self) -> None:
        self.server_seconds += self.server_cpu()
        self.generator_seconds += own_cpu_seconds()


@dataclass
class LoadResult:
    transport: str
    sessions: int
    seconds: float
    calls: int
    errors: Errors
    latencies: list[float]
    server_cpu_seconds: float
    generator_cpu_seconds: float

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


async def load(
    target: Target, transport: str, sessions: int, seconds: float, server_cpu: Callable[[], float]
) -> LoadResult:
    """`sessions` sessions (opened first, untimed) calling add back to back for `seconds`."""
    errors = Errors()
    opened = await open_all([SESSIONS[transport](target) for _ in range(sessions)], errors)
    latencies: list[float] = []
    calls = 0
    rng = random.Random(sessions)  # noqa: S311 - arguments, not secrets

    async def run(session: Session, deadline: float) -> None:
        nonlocal calls
        clock = time.perf_counter
        while clock() < deadline:
            a, b = rng.randrange(1, 1_000_000), rng.randrange(1, 1_000_000)
            started = clock()
            try:
                await session.call(a, b)
            except (CheckFailed, OSError, TimeoutError, h11.ProtocolError, ValueError) as exc:
                errors.add(exc)
                return  # a broken session stops; the others carry on
            latencies.append(clock() - started)
            calls += 1

    window = Window(server_cpu)
    try:
        window.open()
        started = time.perf_counter()
        await asyncio.gather(*(run(session, started + seconds) for session in opened))
        elapsed = time.perf_counter() - started
        window.close()
    finally:
        await close_all(opened)
    return LoadResult(
        transport,
        sessions,
        elapsed,
        calls,
        errors,
        latencies,
        window.server_seconds,
        window.generator_seconds,
    )


@dataclass
class SetupResult:
    transport: str
    sessions: int
    times: list[float]
    calls: int
    errors: Errors


async def setup(target: Target, transport: str, sessions: int) -> SetupResult:
    """Open `sessions` sessions at once; each one's time from the common start until it is
    usable (initialized). Each is then proven usable with one checked call."""
    errors = Errors()
    group = [SESSIONS[transport](target) for _ in range(sessions)]
    times: list[float] = []
    started = time.perf_counter()

    async def timed(session: Session) -> Session | None:
        try:
            await session.open()
        except (CheckFailed, OSError, TimeoutError, h11.ProtocolError, ValueError) as exc:
            errors.add(exc)
            return None
        times.append(time.perf_counter() - started)
        return session

    opened = [s for s in await asyncio.gather(*(timed(session) for session in group)) if s is not None]
    calls = 0
    try:
        results = await asyncio.gather(*(s.call(20, 22) for s in opened), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                errors.add(result)
            else:
                calls += 1
    finally:
        await close_all(group)
    return SetupResult(transport, sessions, times, calls, errors)


@dataclass
class IdleResult:
    sessions: int
    rss_before_kib: int
    rss_open_kib: int
    rss_closed_kib: int
    errors: Errors

    @property
    def kib_per_session(self) -> float:
        return (self.rss_open_kib - self.rss_before_kib) / self.sessions if self.sessions else 0.0


async def idle(
    target: Target, sessions: int, rss_kib: Callable[[], int], settle: float = 1.5, batch: int = 50
) -> IdleResult:
    """Server RSS growth with `sessions` initialized SSE sessions open and idle (only their
    streams left open), opened in batches so the listen backlog is not what is measured."""
    errors = Errors()
    await asyncio.sleep(settle)
    before = rss_kib()
    opened: list[Session] = []
    try:
        for start in range(0, sessions, batch):
            count = min(batch, sessions - start)
            opened += await open_all([SseSession(target) for _ in range(count)], errors)
        await asyncio.gather(*(s.drop_post_connection() for s in opened if isinstance(s, SseSession)))
        await asyncio.sleep(settle)
        during = rss_kib()
    finally:
        await close_all(opened)
    await asyncio.sleep(settle)
    return IdleResult(len(opened), before, during, rss_kib(), errors)
