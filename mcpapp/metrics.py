"""Prometheus metrics for operators (served at /metrics, see mcpapp.views.metrics).

Each worker process counts its own traffic; Prometheus scrapes every worker (README:
"Metrics"). Labels are bounded: endpoint paths are the routed ones, tool names only the
registered tools (anything else is "unknown"), statuses and outcomes are short lists.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "mcp_http_requests",
            "MCP endpoint requests by path, method and status",
            ["endpoint", "method", "status"],
        )
        self.latency = Histogram(
            "mcp_http_request_duration_seconds",
            "Time to the answer's first byte on the MCP endpoints (streams excluded)",
            ["endpoint"],
        )
        self.django_requests = Counter(
            "mcp_django_requests",
            "Requests to the Django views by route name and status",
            ["route", "status"],
        )
        self.django_latency = Histogram(
            "mcp_django_request_duration_seconds", "Time the Django views take, by route name", ["route"]
        )
        self.tool_calls = Counter("mcp_tool_calls", "Tool calls by tool and outcome", ["tool", "outcome"])
        self.tool_latency = Histogram(
            "mcp_tool_call_duration_seconds", "Tool call duration by tool", ["tool"]
        )
        self.token_checks = Counter(
            "mcp_token_checks", "Bearer token checks: answered from memory or from the database", ["result"]
        )
        self.auth_refusals = Counter("mcp_auth_refusals", "Requests refused by the bearer check", ["status"])
        self.forwards = Counter(
            "mcp_forwards",
            "Requests for sessions on another worker: sent there (out) or served for another (in)",
            ["direction", "outcome"],
        )
        self.sessions = Gauge("mcp_active_sessions", "Open MCP sessions held by this worker", ["transport"])
        self.entries = Gauge(
            "mcp_worker_entries", "Entries in this worker's in-memory tables (for leak checks)", ["table"]
        )
        self.audit_buffered = Gauge("mcp_audit_buffered", "Audit records waiting to be written")
        self.audit_written = Counter("mcp_audit_written", "Audit records written to the database")
        self.audit_dropped = Counter("mcp_audit_dropped", "Audit records dropped because the buffer was full")
        self.audit_rejected = Counter(
            "mcp_audit_rejected", "Audit records dropped because the database refused them (see the log)"
        )
        self.oauth_events = Counter("mcp_oauth_events", "OAuth events recorded, by kind", ["kind"])
        self.draining = Gauge("mcp_worker_draining", "1 while this worker drains before it stops")

    def watch_tables(self, tables: dict[str, Callable[[], float]]) -> None:
        for name, size in tables.items():
            self.entries.labels(table=name).set_function(size)


METRICS = Metrics()
