"""One benchmark run: the chosen servers side by side, measured by the same load generator.

    python -m bench [--quick] [--only ours-prod,sdk-daphne] [--transport sse] [--seconds 3]

The servers run pinned to one CPU (taskset), this process (the load generator) to another.
All servers are started first (all pinned to the same CPU; only the one under load uses it).
Then: warm-up, idle SSE memory, concurrent session setup per transport, load at each session
count per transport, the setup and load phases in rounds that visit every server in turn
(`--rounds`, so slow drift of the machine spreads over all of them), what was left behind,
stop (SIGTERM), audit rows.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from collections import Counter
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.support.live import ROOT

from . import loadgen, report
from .servers import DESCRIPTIONS, SERVERS, Server, running
from .stores import BenchError, redis_snapshot, require_services

TRANSPORTS = ("sse", "streamable")
PACKAGES = ("mcp", "daphne", "twisted", "uvicorn", "starlette", "django", "channels", "redis", "h11")
RESULTS = ROOT / "bench" / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases: a development run, not numbers")
    parser.add_argument(
        "--only", default=",".join(SERVERS), help=f"servers, comma-separated: {','.join(SERVERS)}"
    )
    parser.add_argument("--transport", default=",".join(TRANSPORTS), help="sse, streamable or both")
    parser.add_argument("--sessions", default="10,100", help="concurrent sessions of the load phases")
    parser.add_argument("--seconds", type=float, help="length of each load phase (default 10, quick 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds per load and setup phase, each visiting every server (default 3, quick 1)",
    )
    parser.add_argument("--warmup", type=float, help="warm-up per transport, seconds (default 2, quick 0.5)")
    parser.add_argument("--setup-sessions", type=int, help="sessions opened at once (default 200, quick 100)")
    parser.add_argument(
        "--idle-sessions", type=int, help="idle SSE sessions for memory (default 300, quick 100)"
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the server is pinned to")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU this load generator is pinned to")
    parser.add_argument("--no-pin", action="store_true", help="do not pin (results are then not comparable)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON and Markdown go")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds if args.seconds is not None else (2.0 if quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 2.0)
    args.rounds = max(1, args.rounds if args.rounds is not None else (1 if quick else 3))
    args.seconds = max(args.seconds, 0.5 * args.rounds)
    args.setup_sessions = args.setup_sessions or (100 if quick else 200)
    args.idle_sessions = args.idle_sessions or (100 if quick else 300)
    args.servers = _choices(args.only, SERVERS, "--only")
    args.transports = _choices(args.transport, TRANSPORTS, "--transport")
    try:
        args.session_counts = [int(n) for n in args.sessions.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--sessions takes numbers, e.g. 10,100; got {args.sessions!r}")
    if not args.session_counts or min(args.session_counts) < 1:
        parser.error("--sessions needs at least one count of 1 or more")
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    return args


def _choices(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    chosen = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"{flag}: unknown {', '.join(unknown) or 'empty'}; choose from {', '.join(allowed)}")
    return [item for item in allowed if item in chosen]  # a fixed order, whatever the order given


def pin(args: argparse.Namespace) -> dict[str, Any]:
    if args.no_pin:
        return {"pinned": False}
    available = os.sched_getaffinity(0)
    if args.server_cpu == args.load_cpu or not {args.server_cpu, args.load_cpu} <= available:
        raise BenchError(
            f"--server-cpu {args.server_cpu} and --load-cpu {args.load_cpu} must be two different CPUs "
            f"of {sorted(available)} (or pass --no-pin, and read the numbers as unpinned)"
        )
    os.sched_setaffinity(0, {args.load_cpu})
    return {"pinned": True, "server_cpu": args.server_cpu, "load_cpu": args.load_cpu}


def load_summary(result: loadgen.LoadResult) -> dict[str, Any]:
    calls = result.calls
    return {
        "sessions": result.sessions,
        "seconds": round(result.seconds, 3),
        "calls": calls,
        "calls_per_s": round(result.calls_per_second, 1),
        "p50_ms": _ms(loadgen.percentile(result.latencies, 0.5)),
        "p99_ms": _ms(loadgen.percentile(result.latencies, 0.99)),
        "server_cpu_s": round(result.server_cpu_seconds, 3),
        "server_cpu_ms_per_call": round(1000 * result.server_cpu_seconds / calls, 3) if calls else None,
        "generator_cpu_share": round(result.generator_cpu_seconds / result.seconds, 3)
        if result.seconds
        else None,
        "errors": result.errors.count,
        "error_samples": result.errors.samples,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def setup_summary(result: loadgen.SetupResult) -> dict[str, Any]:
    p50, p99 = loadgen.percentile(result.times, 0.5), loadgen.percentile(result.times, 0.99)
    return {
        "sessions": result.sessions,
        "usable": len(result.times),
        "p50_s": None if p50 is None else round(p50, 4),
        "p99_s": None if p99 is None else round(p99, 4),
        "errors": result.errors.count,
        "error_samples": result.errors.samples,
    }


def idle_summary(result: loadgen.IdleResult) -> dict[str, Any]:
    return {
        "sessions": result.sessions,
        "rss_before_kib": result.rss_before_kib,
        "rss_open_kib": result.rss_open_kib,
        "rss_closed_kib": result.rss_closed_kib,
        "kib_per_session": round(result.kib_per_session, 1),
        "errors": result.errors.count,
        "error_samples": result.errors.samples,
    }


def audit_rows(server: Server) -> int | None:
    """tools/call rows in the audit table, read once the server has stopped (so a batched
    writer must have flushed them)."""
    url = server.database_url
    if url is None:
        return None
    query = "SELECT count(*) FROM mcpapp_toolcall WHERE tool = 'add'"
    try:
        if url.startswith("sqlite:///"):
            with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
                return int(conn.execute(query).fetchone()[0])
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute(query).fetchone()
            return int(row[0]) if row else None
    except (sqlite3.Error, ImportError, Exception):  # the table may be renamed by a rewrite
        return None


VARYING = re.compile(r"\b(?:0x)?[0-9a-f]*\d[0-9a-f]*\b")  # addresses, ids, task numbers
EXCEPTION_LINE = re.compile(r"^[\s|+]*([A-Za-z_][\w.]*(?:Error|Exception|Exit)\b.*)$", re.MULTILINE)


def log_problems(server: Server) -> dict[str, Any]:
    """Tracebacks and ERROR records in the server's log, with the commonest exception lines
    (a traceback in a benchmark log is a bug the tests missed)."""
    text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    lines = (VARYING.sub("#", match)[:200] for match in EXCEPTION_LINE.findall(text))
    common = Counter(lines).most_common(3)
    return {
        "tracebacks": text.count("Traceback (most recent call last)"),
        "error_lines": text.count(" ERROR "),
        "commonest_exceptions": [[line, count] for line, count in common],
    }


def merged_load(results: list[loadgen.LoadResult]) -> loadgen.LoadResult:
    """The rounds of one load phase as one result: calls and seconds summed, latencies pooled."""
    errors = loadgen.Errors()
    for result in results:
        errors.count += result.errors.count
        errors.samples.extend(result.errors.samples[: max(0, 5 - len(errors.samples))])
    return loadgen.LoadResult(
        transport=results[0].transport,
        sessions=results[0].sessions,
        seconds=sum(r.seconds for r in results),
        calls=sum(r.calls for r in results),
        errors=errors,
        latencies=[latency for r in results for latency in r.latencies],
        server_cpu_seconds=sum(r.server_cpu_seconds for r in results),
        generator_cpu_seconds=sum(r.generator_cpu_seconds for r in results),
    )


def merged_setup(results: list[loadgen.SetupResult]) -> loadgen.SetupResult:
    errors = loadgen.Errors()
    for result in results:
        errors.count += result.errors.count
        errors.samples.extend(result.errors.samples[: max(0, 5 - len(errors.samples))])
    return loadgen.SetupResult(
        transport=results[0].transport,
        sessions=results[0].sessions,
        times=[t for r in results for t in r.times],
        calls=sum(r.calls for r in results),
        errors=errors,
    )


def measure(servers: dict[str, Server], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every phase against every started server, interleaved.

    The machine's own noise (another process waking up, the CPU's clock) drifts over minutes;
    measuring one server after the other puts that drift into the ratios. So each load and
    setup phase runs in `args.rounds` rounds, and each round visits every server in turn;
    a server's figures pool its rounds.
    """
    outs: dict[str, dict[str, Any]] = {}
    answered: Counter[str] = Counter()
    before: dict[str, dict[str, Any]] = {}
    channels_before: dict[str, set[str]] = {}
    targets = {name: loadgen.Target("127.0.0.1", s.port, token=s.token) for name, s in servers.items()}

    def alive(server: Server, phase: str) -> None:
        if not server.alive():
            raise BenchError(
                f"{server.name} died during {phase} (status {server.process.returncode}); "
                f"the end of {server.log_path}:\n{server.log_tail()}"
            )

    for name, server in servers.items():
        outs[name] = {"description": DESCRIPTIONS[name], "pid": server.pid, **server.facts}
        before[name] = {"rss_kib": server.rss_kib()}
        if server.redis_url:
            snap, channels_before[name] = redis_snapshot(server.redis_url)
            before[name]["redis"] = snap.as_dict()

    say(f"warm-up: {args.warmup:g} s per transport and server")
    for name, server in servers.items():
        for transport in args.transports:
            warm = asyncio.run(loadgen.load(targets[name], transport, 10, args.warmup, server.cpu_seconds))
            answered[name] += warm.calls
            if warm.errors.count:
                say(
                    f"  {name} warm-up {transport}: {warm.errors.count} errors, e.g. {warm.errors.samples[0]}"
                )
            alive(server, "the warm-up")

    if "sse" in args.transports:
        say(f"idle memory: {args.idle_sessions} SSE sessions per server")
        for name, server in servers.items():
            outs[name]["idle"] = idle_summary(
                asyncio.run(loadgen.idle(targets[name], args.idle_sessions, server.rss_kib))
            )
            alive(server, "the idle-memory phase")

    for name in servers:
        outs[name]["setup"] = {}
    for transport in args.transports:
        say(f"setup: {args.setup_sessions} {transport} sessions at once, {args.rounds} rounds")
        rounds: dict[str, list[loadgen.SetupResult]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, server in servers.items():
                opened = asyncio.run(loadgen.setup(targets[name], transport, args.setup_sessions))
                answered[name] += opened.calls
                rounds[name].append(opened)
                alive(server, "the session-setup phase")
        for name in servers:
            outs[name]["setup"][transport] = setup_summary(merged_setup(rounds[name]))

    for name in servers:
        outs[name]["load"] = {transport: {} for transport in args.transports}
    each = args.seconds / args.rounds
    for transport in args.transports:
        for sessions in args.session_counts:
            say(f"load: {transport}, {sessions} sessions, {args.rounds} rounds of {each:g} s per server")
            loads: dict[str, list[loadgen.LoadResult]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, server in servers.items():
                    result = asyncio.run(
                        loadgen.load(targets[name], transport, sessions, each, server.cpu_seconds)
                    )
                    answered[name] += result.calls
                    loads[name].append(result)
                    alive(server, "the load phase")
            for name in servers:
                outs[name]["load"][transport][str(sessions)] = summary = load_summary(
                    merged_load(loads[name])
                )
                say(
                    f"  {name}: {summary['calls_per_s']} calls/s, p50 {summary['p50_ms']} ms, "
                    f"p99 {summary['p99_ms']} ms, {summary['errors']} errors"
                )

    time.sleep(2)  # let sessions that just ended be cleaned up before looking
    for name, server in servers.items():
        after: dict[str, Any] = {"rss_kib": server.rss_kib()}
        new_channels: list[str] = []
        if server.redis_url:
            snap, channels_after = redis_snapshot(server.redis_url)
            after["redis"] = snap.as_dict()
            new_channels = sorted(channels_after - channels_before[name])
        server.stop()
        outs[name]["left_behind"] = {
            "before": before[name],
            "after": after,
            "new_pubsub_channels": len(new_channels),
            "new_pubsub_channel_examples": new_channels[:5],
            "exit_status": server.process.returncode,
            "calls_answered": answered[name],
            "audit_rows": audit_rows(server),
            "log": log_problems(server),
        }
    return outs


def say(text: str) -> None:
    print(text, flush=True)


def git_facts() -> dict[str, Any]:
    def git(*argv: str) -> str:
        result = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return result.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(git("status", "--porcelain")),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _interrupted(signum: int, frame: Any) -> None:
    """SIGTERM (make interrupted, a CI timeout) unwinds like Ctrl-C: every server is stopped."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _interrupted)
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    try:
        if "ours-prod" in args.servers:
            require_services()
        machine = {
            "cpus": os.cpu_count(),
            **pin(args),
            "load_average": os.getloadavg(),
            "python": sys.version.split()[0],
            "packages": {name: _version(name) for name in PACKAGES},
        }
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    logs = args.results / f"{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": ["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)],
        "git": git_facts(),
        "machine": machine,
        "options": {
            "servers": args.servers,
            "transports": args.transports,
            "sessions": args.session_counts,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "setup_sessions": args.setup_sessions,
            "idle_sessions": args.idle_sessions,
            "rounds": args.rounds,
            "quick": args.quick,
        },
        "servers": {},
        "logs": str(logs),
    }
    failed = False
    try:
        with ExitStack() as stack:
            servers: dict[str, Server] = {}
            for name in args.servers:
                say(f"{name}: starting ({DESCRIPTIONS[name]})")
                t0 = time.monotonic()
                try:
                    server = stack.enter_context(
                        running(name, logs, None if args.no_pin else args.server_cpu)
                    )
                except (BenchError, RuntimeError, OSError) as exc:
                    failed = True
                    results["servers"][name] = {"description": DESCRIPTIONS[name], "failed": str(exc)}
                    say(f"  FAILED: {exc}")
                    continue
                servers[name] = server
                say(f"  up on {server.url} (PID {server.pid}) after {time.monotonic() - t0:.1f} s")
            t0 = time.monotonic()
            try:
                results["servers"].update(measure(servers, args))
            except (BenchError, RuntimeError, OSError) as exc:
                failed = True
                for name in servers:
                    results["servers"][name] = {"description": DESCRIPTIONS[name], "failed": str(exc)}
                say(f"  FAILED: {exc}")
            except Exception as exc:  # a bug of the bench itself: say where
                failed = True
                for name in servers:
                    results["servers"][name] = {
                        "description": DESCRIPTIONS[name],
                        "failed": f"bench bug: {exc!r}",
                    }
                say(f"  FAILED (bench bug):\n{traceback.format_exc()}")
            results["measure_wall_s"] = round(time.monotonic() - t0, 1)
    except KeyboardInterrupt:
        say("bench: interrupted; every server it started is stopped")
        return 130
    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["ratios"] = report.ratios(results)
    results["targets"] = report.targets(results)
    markdown = report.markdown(results)
    args.results.mkdir(parents=True, exist_ok=True)
    for stem in (stamp, "latest"):
        (args.results / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.results / f"{stem}.md").write_text(markdown)
    say("")
    say(report.text(results))
    say(f"\nWritten: {args.results / stamp}.json and .md (also latest.*); server logs in {logs}")
    errors = report.error_total(results)
    if failed or errors:
        failure = "a server could not be measured; " if failed else ""
        say(f"bench: {failure}{errors} answers failed their checks")
        return 1
    return 0
