"""Writes for the MCP server (called in batches by mcpapp.audit, never on the request path)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import connections, router, transaction

from oauthapp import services as oauth_services

from .models import ToolCall

if TYPE_CHECKING:
    from .audit import ToolCallRecord

TOOL_LENGTH = ToolCall._meta.get_field("tool").max_length or 128
ERROR_LENGTH = ToolCall._meta.get_field("error").max_length or 500
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(value: str, limit: int) -> str:
    """`value` as text every database stores, cut to `limit` characters: NUL and lone
    surrogates (PostgreSQL refuses both; a client chooses a tool's name) become U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", value[:limit])


AUDIT_COLUMNS = (
    "user_id",
    "application_id",
    "tool",
    "arguments_bytes",
    "outcome",
    "duration_ms",
    "error",
    "created",
)


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
    # Names from the model and our constant column list, quoted; values are parameters.
    sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(AUDIT_COLUMNS))})"  # noqa: S608
    rows = [
        (
            call.user_id,
            call.application_id,
            clean_text(call.tool, TOOL_LENGTH),
            call.arguments_bytes,
            call.outcome,
            call.duration_ms,
            clean_text(call.error, ERROR_LENGTH),
            created.get_db_prep_value(call.created, connection),
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
