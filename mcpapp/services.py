"""Writes for the MCP server (called in batches by mcpapp.audit, never on the request path)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import connections, router, transaction

from oauthapp import services as oauth_services

from .models import ToolCall

if TYPE_CHECKING:
    from .audit import ToolCallRecord


AUDIT_COLUMNS = (
    "user_id",
    "application_id",
    "tool",
    "arguments_bytes",
    "outcome",
    "duration_ms",
    "error",
    "created",
    "call_id",
)


def storable(text: str, limit: int) -> str:
    """`text` cut to `limit` characters as any database stores it: PostgreSQL text holds no NUL
    character (U+FFFD takes its place) and only valid UTF-8 (a lone surrogate becomes "?").
    Tool names and error texts come from callers, so a record must never be refused for them."""
    return text[:limit].replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def tool_calls_record(*, calls: Sequence[ToolCallRecord]) -> None:
    """Store a batch of tool-call audit records (with the time each call was made).

    One executemany of plain rows: the ORM's bulk_create builds (and signals) a model instance
    per row, which on a busy worker was most of the audit's cost.
    """
    if not calls:
        return
    connection = connections[router.db_for_write(ToolCall)]
    table = connection.ops.quote_name(ToolCall._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(c) for c in AUDIT_COLUMNS)
    created = ToolCall._meta.get_field("created")
    call_id = ToolCall._meta.get_field("call_id")
    # Names from the model and our constant column list, quoted; values are parameters. A record
    # already stored (written again from a spool) is skipped: ON CONFLICT works on PostgreSQL
    # and SQLite alike.
    sql = (
        f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(AUDIT_COLUMNS))}) "  # noqa: S608
        f"ON CONFLICT ({connection.ops.quote_name('call_id')}) DO NOTHING"
    )
    rows = [
        (
            call.user_id,
            call.application_id,
            storable(call.tool, 128),
            call.arguments_bytes,
            call.outcome,
            call.duration_ms,
            storable(call.error, 500),
            created.get_db_prep_value(call.created, connection),
            call_id.get_db_prep_value(call.call_id and uuid.UUID(call.call_id), connection),
        )
        for call in calls
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def usage_record(*, clients: dict[tuple[int, int], datetime], tokens: dict[int, datetime]) -> None:
    """Move "last used" forward for clients, consents and (personal) tokens."""
    if not clients and not tokens:
        return
    with transaction.atomic():
        for (application_id, user_id), when in clients.items():
            oauth_services.client_mark_used_at(application_id=application_id, user_id=user_id, when=when)
        # Personal access tokens show their own "last used"; other tokens match no row.
        by_time: dict[datetime, list[int]] = {}
        for token_id, when in tokens.items():
            by_time.setdefault(when, []).append(token_id)
        for when, ids in by_time.items():
            oauth_services.personal_tokens_mark_used(access_token_ids=ids, when=when)
