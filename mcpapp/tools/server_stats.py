from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Avg, Count
from django.utils import timezone

from ..models import ToolCall
from . import TOOLS
from .context import describe, requires_permission


def known_tool_names() -> frozenset[str]:
    """The tool names this server serves. Audit rows also record calls to names it does not
    (typos, probing clients); reports list only these, so a caller cannot fill them with junk."""
    names = set(TOOLS)
    if settings.MCP_CONFORMANCE_FIXTURES:
        from ..conformance import TOOLS as FIXTURE_TOOLS

        names.update(tool.__name__ for tool in FIXTURE_TOOLS)
    return frozenset(names)


@requires_permission("mcpapp.use_server_stats")
@describe(title="Server statistics", read_only=True, idempotent=True, open_world=False)
def server_stats(hours: int = 24) -> dict[str, Any]:
    """Operator tool: how many tool calls each tool served in the last `hours` hours, with
    error counts and mean duration. Needs the "use server_stats" permission."""
    hours = max(1, min(hours, 24 * 90))
    since = timezone.now() - timedelta(hours=hours)
    calls = ToolCall.objects.filter(created__gte=since, tool__in=known_tool_names())
    rows = calls.values("tool").annotate(calls=Count("id"), mean_ms=Avg("duration_ms")).order_by("-calls")
    errors = dict(calls.filter(outcome=ToolCall.Outcome.ERROR).values_list("tool").annotate(n=Count("id")))
    return {
        "hours": hours,
        "tools": [
            {
                "tool": row["tool"],
                "calls": row["calls"],
                "errors": errors.get(row["tool"], 0),
                "mean_ms": round(row["mean_ms"] or 0, 1),
            }
            for row in rows
        ],
    }
