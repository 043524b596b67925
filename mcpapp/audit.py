"""Audit records and "last used" times, written in batches outside the request.

A tool call appends a record to this worker's buffer and returns; a background task writes
the buffer to the database every MCP_AUDIT_FLUSH_SECONDS (or sooner when a batch is full),
from one thread that keeps its database connection. When the database does not answer, the
records stay buffered (up to MCP_AUDIT_BUFFER records; past that new records are dropped,
logged and counted in `mcp_audit_dropped_total`) and the writer retries with backoff. At
shutdown it writes what is left; if the database is down then, the rest goes to a spool file
in MCP_AUDIT_SPOOL_DIR, which the next worker to start writes.

A batch (its records and the "last used" times with it) is written in one transaction: whole
or not at all, so a retried batch never writes a row twice. Only an unreachable database
(OperationalError, InterfaceError) is retried. Any other failure means the database refuses
something in the batch for good (a value it cannot store, a user deleted while the record
waited): the batch is then written record by record, and the records it refuses are dropped,
logged at ERROR and counted in `mcp_audit_rejected_total`, so they never hold up the others.

"Last used" (clients, consents, personal tokens) rides along: at most one update per token a
minute per worker, coalesced in memory.
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
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, transaction
from django.utils import timezone

from . import services
from .identity import Caller
from .metrics import METRICS

logger = logging.getLogger(__name__)

LAST_USED_GRANULARITY_SECONDS = 60
MAX_BACKOFF_SECONDS = 5.0
# The database is away (not answering, connection lost, statement timed out): try again later.
RETRYABLE = (OperationalError, InterfaceError)


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
    # Unique per call (uuid4 hex): writing a record twice stores it once. None in spool files
    # of workers that predate it.
    call_id: str | None = None


def _write(
    calls: list[ToolCallRecord],
    clients: dict[tuple[int, int], datetime],
    tokens: dict[int, datetime],
) -> None:
    """The batch in one transaction: all of it is written, or none of it."""
    close_old_connections()
    try:
        with transaction.atomic():
            services.tool_calls_record(calls=calls)
            services.usage_record(clients=clients, tokens=tokens)
    finally:
        close_old_connections()


@dataclass
class _Sorted:
    """What writing a batch record by record came to."""

    written: int = 0
    refused: list[tuple[ToolCallRecord, str]] = field(default_factory=list)
    # Not tried because the database went away meanwhile: kept for the next attempt.
    left: list[ToolCallRecord] = field(default_factory=list)
    usage_written: bool = False
    usage_refused: str = ""


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _write_each(
    calls: list[ToolCallRecord],
    clients: dict[tuple[int, int], datetime],
    tokens: dict[int, datetime],
) -> _Sorted:
    """A batch the database refused, one record per transaction, setting aside what it refuses."""
    result = _Sorted()
    close_old_connections()
    try:
        for index, call in enumerate(calls):
            try:
                with transaction.atomic():
                    services.tool_calls_record(calls=[call])
            except RETRYABLE:
                result.left = calls[index:]
                return result
            except Exception as exc:
                result.refused.append((call, _why(exc)))
            else:
                result.written += 1
        try:
            with transaction.atomic():
                services.usage_record(clients=clients, tokens=tokens)
        except RETRYABLE:
            return result
        except Exception as exc:
            result.usage_refused = _why(exc)
        else:
            result.usage_written = True
        return result
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
        # token id -> when its use was last noted (monotonic): the "last used" throttle.
        self._noted: dict[int, float] = {}
        self._wake = asyncio.Event()
        # One thread: writes stay in order and keep one connection.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcp-audit")
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        self._closing = False
        self._dropped_logged = 0.0
        # Records taken from the buffer by the write under way.
        self._in_hand: list[ToolCallRecord] = []
        self.abandoned = False  # shut down while a write was stuck on the database

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
        """Note that the caller's token (and so its client and consent) was used now.

        Throttled per token, not per client and user: a user's personal tokens all belong to
        one client, and each shows its own "last used".
        """
        now = time.monotonic()
        last = self._noted.get(caller.token_id)
        if last is not None and now - last < LAST_USED_GRANULARITY_SECONDS:
            return
        self._noted[caller.token_id] = now
        stamp = timezone.now()
        self._clients[(caller.application_id, caller.user_id)] = stamp
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
            try:
                self._prune_throttle()
                ok = await self.flush_once()
            except Exception:
                # A bug of ours must not end the writer: every later record would wait forever.
                logger.exception("the audit writer failed; it carries on")
                ok = False
            backoff = self.interval if ok else min(max(backoff * 2, 0.5), MAX_BACKOFF_SECONDS)

    def _prune_throttle(self) -> None:
        if len(self._noted) < 1024:
            return
        cutoff = time.monotonic() - LAST_USED_GRANULARITY_SECONDS
        self._noted = {key: at for key, at in self._noted.items() if at >= cutoff}

    async def flush_once(self) -> bool:
        """Write one batch; False when the database is unreachable (everything is kept)."""
        if not self._calls and not self._clients and not self._tokens:
            return True
        calls = [self._calls.popleft() for _ in range(min(self.batch_size, len(self._calls)))]
        clients, self._clients = self._clients, {}
        tokens, self._tokens = self._tokens, {}
        loop = asyncio.get_running_loop()
        self._in_hand = calls
        try:
            try:
                await loop.run_in_executor(self._executor, _write, calls, clients, tokens)
            except RETRYABLE as exc:
                self._keep(calls, clients, tokens)
                self._failing(exc)
                return False
            except Exception:
                # The database refuses something in this batch, and will again: sort it out.
                sorted_ = await loop.run_in_executor(self._executor, _write_each, calls, clients, tokens)
                self._report(sorted_)
                if sorted_.left or not (sorted_.usage_written or sorted_.usage_refused):
                    self._keep(sorted_.left, {} if sorted_.usage_written else clients, tokens)
                    self._failing(OperationalError("the database went away"))
                    return False
                written = sorted_.written
            else:
                written = len(calls)
        finally:
            self._in_hand = []
            METRICS.audit_buffered.set(len(self._calls))
        METRICS.audit_written.inc(written)
        if self._failing_since is not None:
            logger.warning(
                "audit records are written again after %.0f s; %d still buffered",
                time.monotonic() - self._failing_since,
                len(self._calls),
            )
            self._failing_since = None
        return True

    def _keep(
        self,
        calls: list[ToolCallRecord],
        clients: dict[tuple[int, int], datetime],
        tokens: dict[int, datetime],
    ) -> None:
        """Put what was not written back in front of the buffer, for the next attempt."""
        self._calls.extendleft(reversed(calls))
        for pair, when in clients.items():
            self._clients.setdefault(pair, when)
        for token_id, when in tokens.items():
            self._tokens.setdefault(token_id, when)

    def _failing(self, exc: BaseException) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            logger.warning(
                "audit records could not be written (%s); %d kept, retrying",
                type(exc).__name__,
                len(self._calls),
            )

    def _report(self, sorted_: _Sorted) -> None:
        if sorted_.refused:
            METRICS.audit_rejected.inc(len(sorted_.refused))
            record, why = sorted_.refused[0]
            logger.error(
                "the database refused %d audit record(s), which are dropped (first: tool %r, user %s: %s)",
                len(sorted_.refused),
                record.tool,
                record.user_id,
                why,
            )
        if sorted_.usage_refused:
            logger.error(
                'the database refused a "last used" update, which is dropped (%s)', sorted_.usage_refused
            )

    async def close(self, *, timeout: float) -> None:
        """Stop the background task and write everything left (spooling what cannot be).

        Bounded by `timeout`: a batch never cancelled half-way (its records would be lost),
        but never waited for past the deadline either (the database may hang; its connect
        and statement timeouts bound the write in its thread).
        """
        deadline = time.monotonic() + timeout
        if self._task is not None:
            self._closing = True
            self._wake.set()
            if not await self._within(self._task, deadline):
                self._give_up()
                return
            self._task = None
        while (self._calls or self._clients or self._tokens) and time.monotonic() < deadline:
            attempt = asyncio.ensure_future(self.flush_once())
            if not await self._within(attempt, deadline):
                self._give_up()
                return
            if not attempt.result():
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        if self._calls:
            self._spool()
        self._executor.shutdown(wait=False)

    @staticmethod
    async def _within(task: asyncio.Future[Any], deadline: float) -> bool:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
        return bool(done)

    def _give_up(self) -> None:
        """The database hangs: spool the buffer and the batch the stuck write holds. That batch
        is in doubt (the write may yet commit); its records carry their call_id, so the next
        worker writing them from the spool stores each one once whatever happened to it."""
        in_doubt = self._in_hand
        logger.error(
            "the audit writer is still waiting on the database at shutdown; spooling %d buffered "
            "record(s) and the %d of the write under way",
            len(self._calls),
            len(in_doubt),
        )
        self.abandoned = True
        self._calls.extendleft(reversed(in_doubt))
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
