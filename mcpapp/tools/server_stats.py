from datetime import timedelta
from typing import Any

from django.db.models import Avg, Count
from django.utils import timezone

from ..models import ToolCall
from .context import requires_permission


@requires_permission("mcpapp.use_server_stats")
def server_stats(hours: int = 24) -> dict[str, Any]:
    """Operator tool: how many tool calls each tool served in the last `hours` hours, with
    error counts and mean duration. Needs the "use server_stats" permission."""
    hours = max(1, min(hours, 24 * 90))
    since = timezone.now() - timedelta(hours=hours)
    rows = (
        ToolCall.objects.filter(created__gte=since)
        .values("tool")
        .annotate(calls=Count("id"), mean_ms=Avg("duration_ms"))
        .order_by("-calls")
    )
    errors = dict(
        ToolCall.objects.filter(created__gte=since, outcome=ToolCall.Outcome.ERROR)
        .values_list("tool")
        .annotate(n=Count("id"))
    )
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
