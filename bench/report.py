"""The run's figures as tables (terminal and Markdown), the ratios to the peers, and the
issue's targets marked met or not met."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OURS = ("ours-prod", "ours-local")
PEERS = ("sdk-daphne", "sdk-uvicorn")
TRANSPORT_NAMES = {"sse": "SSE", "streamable": "Streamable"}
# Above this share of its core the generator may be what limits a figure (said in the notes).
GENERATOR_LIMIT = 0.85


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    digits: int
    higher_is_better: bool


def figures_of(results: dict[str, Any]) -> list[Figure]:
    """The measured figures, in table order, for the transports and counts of this run."""
    options = results["options"]
    out = []
    for transport in options["transports"]:
        name = TRANSPORT_NAMES[transport]
        for n in options["sessions"]:
            prefix = f"load.{transport}.{n}"
            out += [
                Figure(f"{prefix}.calls_per_s", f"{name}, {n} sessions: calls/s", "", 0, True),
                Figure(f"{prefix}.p50_ms", f"{name}, {n} sessions: p50 latency", "ms", 1, False),
                Figure(f"{prefix}.p99_ms", f"{name}, {n} sessions: p99 latency", "ms", 1, False),
                Figure(
                    f"{prefix}.server_cpu_ms_per_call",
                    f"{name}, {n} sessions: server CPU per call",
                    "ms",
                    2,
                    False,
                ),
            ]
    for transport in options["transports"]:
        name, n = TRANSPORT_NAMES[transport], options["setup_sessions"]
        out += [
            Figure(f"setup.{transport}.p50_s", f"{name}, {n} opened at once: setup p50", "s", 3, False),
            Figure(f"setup.{transport}.p99_s", f"{name}, {n} opened at once: setup p99", "s", 3, False),
        ]
    if "sse" in options["transports"]:
        n = options["idle_sessions"]
        out.append(Figure("idle.kib_per_session", f"idle SSE session memory ({n} open)", "KiB", 0, False))
    return out


def value(server: dict[str, Any] | None, key: str) -> float | None:
    """A figure of one server's results by dotted key: load.sse.10.calls_per_s, setup.sse.p50_s."""
    if not server or "failed" in server:
        return None
    parts = key.split(".")
    node: Any = server
    if parts[0] == "load":
        node = server.get("load", {}).get(parts[1], {}).get(parts[2], {})
        parts = parts[3:]
    elif parts[0] == "setup":
        node = server.get("setup", {}).get(parts[1], {})
        parts = parts[2:]
    else:
        node = server.get(parts[0], {})
        parts = parts[1:]
    for part in parts:
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, int | float) else None


def errors_of(server: dict[str, Any] | None, key: str) -> int:
    """Errors of the phase a figure comes from."""
    if not server or "failed" in server:
        return 0
    parts = key.split(".")
    phase: dict[str, Any] = {}
    if parts[0] == "load":
        phase = server.get("load", {}).get(parts[1], {}).get(parts[2], {})
    elif parts[0] == "setup":
        phase = server.get("setup", {}).get(parts[1], {})
    elif parts[0] == "idle":
        phase = server.get("idle", {})
    return int(phase.get("errors") or 0)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 3)


def ratios(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """ours / peer for every figure (and SDK-on-daphne / SDK-on-uvicorn), from this run."""
    servers = results["servers"]
    pairs = [(ours, peer) for ours in OURS for peer in PEERS] + [("sdk-daphne", "sdk-uvicorn")]
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for mine, peer in pairs:
        if mine in servers and peer in servers:
            out.setdefault(mine, {})[peer] = {
                f.key: ratio(value(servers[mine], f.key), value(servers[peer], f.key))
                for f in figures_of(results)
            }
    return out


@dataclass(frozen=True)
class Target:
    label: str
    key: str
    peer: str
    at_most: bool  # the ratio must be <= limit (else >= limit)
    limit: float


TARGETS = (
    Target(
        "10 sessions, SSE: calls/s at least 0.9x SDK-on-daphne",
        "load.sse.10.calls_per_s",
        "sdk-daphne",
        False,
        0.9,
    ),
    Target(
        "10 sessions, Streamable: calls/s at least 0.9x SDK-on-daphne",
        "load.streamable.10.calls_per_s",
        "sdk-daphne",
        False,
        0.9,
    ),
    Target(
        "10 sessions, SSE: p50 latency within 1.2x SDK-on-daphne",
        "load.sse.10.p50_ms",
        "sdk-daphne",
        True,
        1.2,
    ),
    Target(
        "10 sessions, Streamable: p50 latency within 1.2x SDK-on-daphne",
        "load.streamable.10.p50_ms",
        "sdk-daphne",
        True,
        1.2,
    ),
    Target(
        "200 at once, SSE: setup p50 within 2x SDK-on-uvicorn", "setup.sse.p50_s", "sdk-uvicorn", True, 2.0
    ),
    Target(
        "200 at once, Streamable: setup p50 within 2x SDK-on-uvicorn",
        "setup.streamable.p50_s",
        "sdk-uvicorn",
        True,
        2.0,
    ),
    Target(
        "idle SSE session memory at or under SDK-on-uvicorn", "idle.kib_per_session", "sdk-uvicorn", True, 1.0
    ),
)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for production mode against this run's peers: met, not met, or
    n/a (a server or phase that was not run)."""
    servers = results["servers"]
    ours = servers.get("ours-prod")
    out = []
    for target in TARGETS:
        peer = servers.get(target.peer)
        measured = ratio(value(ours, target.key), value(peer, target.key))
        notes = []
        if target.key.startswith("setup.") and results["options"]["setup_sessions"] != 200:
            notes.append(f"measured with {results['options']['setup_sessions']} sessions, not 200")
        errors = errors_of(ours, target.key) + errors_of(peer, target.key)
        if errors:
            notes.append(f"{errors} errors in the phase")
        if measured is None:
            met = None
        else:
            met = (measured <= target.limit if target.at_most else measured >= target.limit) and not errors
        out.append(
            {
                "target": target.label,
                "figure": target.key,
                "peer": target.peer,
                "ratio": measured,
                "goal": f"{'<=' if target.at_most else '>='} {target.limit:g}x",
                "met": met,
                "notes": "; ".join(notes),
            }
        )
    left = (ours or {}).get("left_behind", {})
    audited, answered = left.get("audit_rows"), left.get("calls_answered")
    out.append(
        {
            "target": "every call audited (audit rows after SIGTERM = calls answered)",
            "figure": "left_behind.audit_rows",
            "peer": None,
            "ratio": None if audited is None or not answered else round(audited / answered, 4),
            "goal": "= 1x",
            "met": None if audited is None or answered is None else audited == answered,
            "notes": "" if audited is None else f"{audited} rows for {answered} calls",
        }
    )
    return out


def error_total(results: dict[str, Any]) -> int:
    total = 0
    for server in results["servers"].values():
        for per_count in server.get("load", {}).values():
            total += sum(int(phase.get("errors") or 0) for phase in per_count.values())
        total += sum(int(phase.get("errors") or 0) for phase in server.get("setup", {}).values())
        total += int(server.get("idle", {}).get("errors") or 0)
    return total


# --- rendering ----------------------------------------------------------------------------------


def _num(number: float | None, digits: int) -> str:
    if number is None:
        return "-"
    return f"{number:,.{digits}f}"


def _ratio(number: float | None) -> str:
    return "-" if number is None else f"{number:.2f}x"


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "NOT MET")


def tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by the terminal and Markdown output."""
    servers = results["servers"]
    names = list(servers)
    rats = results["ratios"]
    pairs = [(m, p) for m in (*OURS, "sdk-daphne") for p in PEERS if m != p and p in rats.get(m, {})]
    short = {"ours-prod": "prod", "ours-local": "local", "sdk-daphne": "daphne", "sdk-uvicorn": "uvicorn"}
    header = ["figure", *names, *(f"{short[m]}/{short[p]}" for m, p in pairs)]
    rows = []
    for figure in figures_of(results):
        row = [f"{figure.label} ({figure.unit})" if figure.unit else figure.label]
        for name in names:
            cell = _num(value(servers[name], figure.key), figure.digits)
            errors = errors_of(servers[name], figure.key)
            row.append(
                f"{cell} ({errors} err)" if errors and figure.key.endswith(("calls_per_s", "p50_s")) else cell
            )
        row += [_ratio(rats[m][p].get(figure.key)) for m, p in pairs]
        rows.append(row)
    gen_row = ["load generator CPU, busiest phase (share of its core)"]
    for name in names:
        shares = [
            phase.get("generator_cpu_share") or 0.0
            for per_count in servers[name].get("load", {}).values()
            for phase in per_count.values()
        ]
        gen_row.append(f"{max(shares):.0%}" if shares else "-")
    rows.append(gen_row + [""] * len(pairs))
    out = [("Measured (ratios are ours / peer, same run)", header, rows)]

    left_header = ["left behind", *names]
    left_rows: list[list[str]] = []

    def left(label: str, get: Callable[[dict[str, Any]], Any]) -> None:
        cells = []
        for name in names:
            lb = servers[name].get("left_behind")
            try:
                cells.append("-" if lb is None else str(get(lb)))
            except (KeyError, TypeError):
                cells.append("-")
        left_rows.append([label, *cells])

    def change(get: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], str]:
        return lambda lb: f"{get(lb['before'])} -> {get(lb['after'])}"

    def redis(field: str) -> Callable[[dict[str, Any]], str]:
        return change(lambda snapshot: snapshot["redis"][field])

    left("worker RSS before -> after (MiB)", change(lambda snapshot: f"{snapshot['rss_kib'] / 1024:.1f}"))
    left("Redis PUBSUB CHANNELS (server-wide)", redis("pubsub_channels"))
    left(
        "  of which new and still there",
        lambda lb: lb["new_pubsub_channels"] if "redis" in lb["after"] else "-",
    )
    left("Redis PUBSUB NUMPAT (server-wide)", redis("pubsub_numpat"))
    left("subscriptions held on our Redis db", redis("subscriptions_on_db"))
    left("keys in our Redis db", redis("keys"))
    left("Redis used_memory (KiB)", change(lambda snapshot: snapshot["redis"]["used_memory_bytes"] // 1024))
    left(
        "audit rows / calls answered",
        lambda lb: "-" if lb["audit_rows"] is None else f"{lb['audit_rows']} / {lb['calls_answered']}",
    )
    left("exit status after SIGTERM", lambda lb: lb["exit_status"])
    left(
        "tracebacks / ERROR lines in its log",
        lambda lb: f"{lb['log']['tracebacks']} / {lb['log']['error_lines']}",
    )
    out.append(("What each run left behind", left_header, left_rows))

    target_rows = [
        [
            t["target"],
            _ratio(t["ratio"]) if t["peer"] else t["notes"],
            t["goal"],
            _verdict(t["met"]),
            t["notes"] if t["peer"] else "",
        ]
        for t in results["targets"]
    ]
    out.append(
        ("Issue 8 targets (production mode)", ["target", "measured", "goal", "verdict", "notes"], target_rows)
    )
    return out


def notes(results: dict[str, Any]) -> list[str]:
    out = []
    for name, server in results["servers"].items():
        if "failed" in server:
            out.append(f"{name} could not be measured: {server['failed'].splitlines()[0]}")
            continue
        for transport, per_count in server.get("load", {}).items():
            for n, phase in per_count.items():
                where = f"{name} {transport} {n} sessions"
                share = phase.get("generator_cpu_share") or 0
                if share > GENERATOR_LIMIT:
                    out.append(f"{where}: the load generator used {share:.0%} of its core (may be its limit)")
                if phase.get("errors"):
                    out.append(f"{where}: {phase['errors']} errors, e.g. {phase['error_samples'][0]}")
        for transport, phase in server.get("setup", {}).items():
            if phase.get("errors"):
                out.append(
                    f"{name} setup {transport}: {phase['errors']} errors, e.g. {phase['error_samples'][0]}"
                )
        for line, count in server.get("left_behind", {}).get("log", {}).get("commonest_exceptions", []):
            out.append(f"{name} log: {count}x {line}")
        idle = server.get("idle", {})
        if idle.get("errors"):
            out.append(f"{name} idle: {idle['errors']} errors, e.g. {idle['error_samples'][0]}")
    if not results["machine"].get("pinned"):
        out.append("not pinned (--no-pin): server and load generator shared CPUs")
    if results["options"]["quick"]:
        out.append("--quick: short phases, for development; the numbers are not the benchmark's")
    return out


def _render_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for index, row in enumerate([header, *rows]):
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _render_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _run_line(results: dict[str, Any]) -> str:
    o, m, g = results["options"], results["machine"], results["git"]
    pin = f"server on CPU {m['server_cpu']}, load on CPU {m['load_cpu']}" if m.get("pinned") else "unpinned"
    return (
        f"{results['started']} · {g['branch']} {g['commit'][:10]}{' (dirty)' if g['dirty'] else ''} · "
        f"{m['cpus']} CPUs, {pin}, load average {m['load_average'][0]:.2f} · "
        f"{o['seconds']:g} s per load phase · `{' '.join(results['command'])}`"
    )


def text(results: dict[str, Any]) -> str:
    parts = [_run_line(results)]
    for title, header, rows in tables(results):
        parts += ["", title, _render_text(header, rows)]
    found = notes(results)
    if found:
        parts += ["", "Notes", *(f"- {n}" for n in found)]
    return "\n".join(parts)


def markdown(results: dict[str, Any]) -> str:
    parts = ["# Benchmark", "", _run_line(results), ""]
    parts += [f"- **{name}**: {server['description']}" for name, server in results["servers"].items()]
    versions = ", ".join(f"{k} {v}" for k, v in results["machine"].get("packages", {}).items() if v)
    if versions:
        parts += ["", f"Versions: {versions}."]
    for title, header, rows in tables(results):
        parts += ["", f"## {title}", "", _render_markdown(header, rows)]
    found = notes(results)
    if found:
        parts += ["", "## Notes", "", *(f"- {n}" for n in found)]
    return "\n".join(parts) + "\n"
