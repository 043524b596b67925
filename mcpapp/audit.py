"""Audit records and "last used" times, written in batches outside the request.

A tool call appends a record to this worker's buffer and returns; a background task writes
the buffer to the database every MCP_AUDIT_FLUSH_SECONDS (or sooner when a batch is full),
from one thread that keeps its database connection. When the database does not answer, the
records stay buffered (up to MCP_AUDIT_BUFFER records; past that new records are dropped,
logged and counted in `mcp_audit_dropped_total`) and the writer retries with backoff. At
shutdown it writes what is left; if the database is down then, the rest goes to a spool file
in MCP_AUDIT_SPOOL_DIR, which the next worker to start writes.

"Last used" (clients, consents, personal tokens) rides along: at most one update per client
and user a minute per worker, coalesced in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from . import services
from .identity import Caller
from .metrics import METRICS

logger = logging.getLogger(__name__)

LAST_USED_GRANULARITY_SECONDS = 60
MAX_BACKOFF_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    user_id: int | None
    application_id: int | None
    tool: str
    arguments_bytes: int
    outcome: str
    duration_ms: float
    error: str
    created: datetime


def _write(
    calls: list[ToolCallRecord],
    clients: dict[tuple[int, int], datetime],
    tokens: dict[int, datetime],
) -> None:
    close_old_connections()
    try:
        services.tool_calls_record(calls=calls)
        services.usage_record(clients=clients, tokens=tokens)
    finally:
        close_old_connections()


class AuditWriter:
    def __init__(self, *, worker_id: str) -> None:
        self.worker_id = worker_id
        self.capacity = settings.MCP_AUDIT_BUFFER
        self.batch_size = 500
        self.interval = settings.MCP_AUDIT_FLUSH_MS / 1000
        self.spool_dir = Path(settings.MCP_AUDIT_SPOOL_DIR)
        self._calls: deque[ToolCallRecord] = deque()
        self._clients: dict[tuple[int, int], datetime] = {}
        self._tokens: dict[int, datetime] = {}
        self._noted: dict[tuple[int, int], float] = {}
        self._wake = asyncio.Event()
        # One thread: writes stay in order and keep one connection.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcp-audit")
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        self._closing = False
        self._dropped_logged = 0.0

    # --- the request path: no await, no I/O ------------------------------------------------------

    def record_call(self, record: ToolCallRecord) -> None:
        if len(self._calls) >= self.capacity:
            METRICS.audit_dropped.inc()
            now = time.monotonic()
            if now - self._dropped_logged > 10:
                self._dropped_logged = now
                logger.error(
                    "audit buffer full (%d records, database unreachable?): dropping tool-call records",
                    self.capacity,
                )
            return
        self._calls.append(record)
        METRICS.audit_buffered.set(len(self._calls))
        if len(self._calls) >= self.batch_size:
            self._wake.set()

    def note_use(self, caller: Caller) -> None:
        key = (caller.application_id, caller.user_id)
        now = time.monotonic()
        last = self._noted.get(key)
        if last is not None and now - last < LAST_USED_GRANULARITY_SECONDS:
            return
        self._noted[key] = now
        stamp = timezone.now()
        self._clients[key] = stamp
        self._tokens[caller.token_id] = stamp

    @property
    def pending(self) -> int:
        return len(self._calls)

    @property
    def throttle_entries(self) -> int:
        return len(self._noted)

    # --- the writer ---------------------------------------------------------------------------

    def start(self) -> None:
        self._ingest_spool()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        backoff = self.interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            self._wake.clear()
            if self._closing:
                return
            self._prune_throttle()
            ok = await self.flush_once()
            backoff = self.interval if ok else min(max(backoff * 2, 0.5), MAX_BACKOFF_SECONDS)

    def _prune_throttle(self) -> None:
        if len(self._noted) < 1024:
            return
        cutoff = time.monotonic() - LAST_USED_GRANULARITY_SECONDS
        self._noted = {key: at for key, at in self._noted.items() if at >= cutoff}

    async def flush_once(self) -> bool:
        """Write one batch; False when the database refused it (everything is kept)."""
        if not self._calls and not self._clients:
            return True
        calls = [self._calls.popleft() for _ in range(min(self.batch_size, len(self._calls)))]
        clients, self._clients = self._clients, {}
        tokens, self._tokens = self._tokens, {}
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, _write, calls, clients, tokens)
        except DatabaseError as exc:
            self._calls.extendleft(reversed(calls))
            for pair, when in clients.items():
                self._clients.setdefault(pair, when)
            for token_id, when in tokens.items():
                self._tokens.setdefault(token_id, when)
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                logger.warning(
                    "audit records could not be written (%s); %d kept, retrying",
                    type(exc).__name__,
                    len(self._calls),
                )
            return False
        finally:
            METRICS.audit_buffered.set(len(self._calls))
        METRICS.audit_written.inc(len(calls))
        if self._failing_since is not None:
            logger.warning(
                "audit records are written again after %.0f s; %d still buffered",
                time.monotonic() - self._failing_since,
                len(self._calls),
            )
            self._failing_since = None
        return True

    async def close(self, *, timeout: float) -> None:
        """Stop the background task and write everything left (spooling what cannot be)."""
        if self._task is not None:
            # Never cancel a batch half-way: records taken from the buffer would be lost.
            self._closing = True
            self._wake.set()
            await self._task
            self._task = None
        deadline = time.monotonic() + timeout
        while (self._calls or self._clients) and time.monotonic() < deadline:
            if not await self.flush_once():
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        if self._calls:
            self._spool()
        self._executor.shutdown(wait=False)

    # --- spool ------------------------------------------------------------------------------------

    def _spool(self) -> None:
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            path = self.spool_dir / f"audit-{self.worker_id}-{int(time.time())}.jsonl"
            with path.open("w") as handle:
                for record in self._calls:
                    data = asdict(record)
                    data["created"] = record.created.isoformat()
                    handle.write(json.dumps(data) + "\n")
            logger.warning(
                "database unreachable at shutdown: %d audit records spooled to %s", len(self._calls), path
            )
            self._calls.clear()
        except OSError:
            logger.exception("could not spool %d audit records", len(self._calls))

    def _ingest_spool(self) -> None:
        if not self.spool_dir.is_dir():
            return
        for path in sorted(self.spool_dir.glob("audit-*.jsonl")):
            claimed = path.with_suffix(f".{os.getpid()}.claimed")
            try:
                path.rename(claimed)  # atomic: one worker takes each file
            except OSError:
                continue
            count = 0
            with claimed.open() as handle:
                for line in handle:
                    data = json.loads(line)
                    data["created"] = datetime.fromisoformat(data["created"])
                    self._calls.append(ToolCallRecord(**data))
                    count += 1
            claimed.unlink()
            logger.warning("writing %d audit records spooled by a worker that stopped", count)
