"""Writes for the MCP server."""

from __future__ import annotations

from .models import ToolCall


def tool_call_record(
    *,
    user_id: int | None,
    application_id: int | None,
    tool: str,
    arguments_bytes: int,
    outcome: str,
    duration_ms: float,
    error: str = "",
) -> None:
    ToolCall.objects.create(
        user_id=user_id,
        application_id=application_id,
        tool=tool[:128],
        arguments_bytes=arguments_bytes,
        outcome=outcome,
        duration_ms=duration_ms,
        error=error[:500],
    )
