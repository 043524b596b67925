"""daphne, started and stopped the way an operator expects.

`DrainingServer` is daphne's own server with three changes:
- the MCP worker starts with the server (its Redis subscription and heartbeat are up before
  the first request), and the listen backlog is deep enough for a burst of new sessions
  (Twisted's default of 50 makes the 51st simultaneous connection wait a second for a SYN
  retry);
- SIGTERM drains (what `docker compose stop` and `up --build` send): the worker stops taking
  new sessions and says so on /healthz, in-flight calls get MCP_DRAIN_SECONDS to finish,
  streams end properly, the audit buffer is written, and only then does daphne cancel what is
  left and exit. SIGINT (Ctrl-C in `make run`) does the same with no grace; a second Ctrl-C
  (over a second later: within it, it is the first one again, as `make run`'s reloader
  forwards it) exits at once;
- the process really exits: threads the SDK started for sync functions (AnyIO's worker
  threads, which under daphne are never told to stop) are released, and threads stuck on a
  database that hangs are not waited for past EXIT_WAIT_SECONDS.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
import time
from typing import Any

from daphne.server import Server
from django.conf import settings
from twisted.internet import defer, reactor

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("mcpapp.access")

LISTEN_BACKLOG = 2048
# A SIGINT this soon after the first is the same Ctrl-C arriving twice (see _interrupt).
REPEAT_SIGINT_SECONDS = 1.0
# How long interpreter shutdown may wait for threads once the server has stopped.
EXIT_WAIT_SECONDS = 3.0


class DrainingServer(Server):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        endpoints = [
            f"{e}:backlog={LISTEN_BACKLOG}" if e.startswith("tcp:") and "backlog=" not in e else e
            for e in kwargs.pop("endpoints", None) or []
        ]
        super().__init__(*args, endpoints=endpoints, **kwargs)
        self._grace = float(settings.MCP_DRAIN_SECONDS)
        self._interrupted_at: float | None = None
        self._stopping = False
        self._starting: asyncio.Future[None] | None = None

    def run(self) -> None:
        reactor.callWhenRunning(self._when_running)
        try:
            super().run()
        finally:
            release_anyio_threads()
            exit_even_if_threads_hang()

    def _when_running(self) -> None:
        loop = asyncio.get_event_loop()
        # After Twisted installed its own handlers: ours replace them.
        loop.add_signal_handler(signal.SIGTERM, self._stop, float(settings.MCP_DRAIN_SECONDS), "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._interrupt)
        self._starting = asyncio.ensure_future(self._start_worker())

    @staticmethod
    async def _start_worker() -> None:
        from .worker import get_worker

        try:
            await get_worker()
        except Exception:
            logger.exception("the MCP worker could not start")
            return
        # Everything loaded so far (Django, the apps, the SDK, pydantic's schemas) lives as long
        # as the process: out of the collector's sight, a full collection no longer walks
        # hundreds of thousands of objects, which stalled every request for a tenth of a second.
        gc.freeze()

    def _interrupt(self) -> None:
        now = time.monotonic()
        if self._interrupted_at is not None:
            if now - self._interrupted_at < REPEAT_SIGINT_SECONDS:
                # The same Ctrl-C twice: the terminal sent it to the whole process group, and
                # `make run`'s reloader, stopping, sends us one of its own right after.
                return
            logger.warning("SIGINT again: exiting at once")
            os._exit(130)  # a second Ctrl-C: the user means it
        self._interrupted_at = now
        self._stop(0.0, "SIGINT")

    def _stop(self, grace: float, why: str) -> None:
        """Begin stopping (once); a later, more urgent signal only shortens the grace."""
        if self._stopping:
            if grace < self._grace:
                logger.info("%s: cutting the drain short", why)
                self._grace = grace
                from .worker import current_worker

                worker = current_worker()
                if worker is not None:
                    worker.cut_drain_short()
            return
        self._stopping = True
        logger.info("%s: stopping%s", why, f" (in-flight requests get {grace:.0f} s)" if grace else "")
        self._grace = grace
        if reactor.running:
            reactor.stop()  # type: ignore[misc]

    def log_action(self, protocol: Any, action: Any, details: dict[str, Any]) -> None:
        """With LOG_FORMAT=json, access lines are log records with fields; else daphne's own."""
        if settings.LOG_FORMAT != "json":
            super().log_action(protocol, action, details)
            return
        if action == "complete":
            access_logger.info(
                "%s %s %s",
                details.get("method"),
                details.get("path"),
                details.get("status"),
                extra={
                    "method": details.get("method"),
                    "path": details.get("path"),
                    "status": details.get("status"),
                    "size": details.get("size"),
                    "duration_ms": round(float(details.get("time_taken") or 0) * 1000, 1),
                    "client": (details.get("client") or "").split(":")[0],
                },
            )

    def kill_all_applications(self) -> defer.Deferred[Any]:
        """Before daphne cancels every request: drain the worker (see the module docstring)."""
        return defer.Deferred.fromFuture(asyncio.ensure_future(self._drain_then_kill()))

    async def _drain_then_kill(self) -> None:
        from .worker import current_worker

        worker = current_worker()
        if worker is not None:
            try:
                await worker.drain(grace=self._grace)
            except Exception:
                logger.exception("draining the MCP worker failed")
        remaining = super().kill_all_applications()
        await remaining.asFuture(asyncio.get_event_loop())


def release_anyio_threads() -> None:
    """Tell AnyIO's idle worker threads to finish, so interpreter shutdown does not wait on them."""
    for thread in threading.enumerate():
        queue = getattr(thread, "queue", None)
        if thread.name == "AnyIO worker thread" and queue is not None:
            thread.stopping = True  # type: ignore[attr-defined]
            try:
                queue.put_nowait(None)
            except Exception:  # a full queue: the thread is busy and will see it after
                logger.debug("could not signal an AnyIO worker thread", exc_info=True)


def exit_even_if_threads_hang(seconds: float = EXIT_WAIT_SECONDS) -> None:
    """The drain is done and everything is written or spooled; make sure the process ends.

    Interpreter shutdown joins every thread pool's threads, and one stuck on a database that
    hangs (not down: its connection open, nothing answering) would hold the exit until the
    database answers or the orchestrator kills the worker. A daemon timer ends the process
    if shutdown takes longer than `seconds`; nothing is lost by it (the audit writer spooled
    what its stuck write held, and those records are written once by the next worker).
    """

    def give_up() -> None:
        stuck = [
            t.name for t in threading.enumerate() if t.is_alive() and not t.daemon and t.name != "MainThread"
        ]
        logger.warning(
            "exiting without waiting for %d thread(s) still blocked (the database?): %s",
            len(stuck),
            ", ".join(stuck[:5]),
        )
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.name = "exit-watchdog"
    timer.start()
