"""Writes for the MCP server (called in batches by mcpapp.audit, never on the request path)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import transaction

from oauthapp import services as oauth_services

from .models import ToolCall

if TYPE_CHECKING:
    from .audit import ToolCallRecord


def tool_calls_record(*, calls: Sequence[ToolCallRecord]) -> None:
    """Store a batch of tool-call audit records (with the time each call was made)."""
    if not calls:
        return
    ToolCall.objects.bulk_create(
        [
            ToolCall(
                user_id=call.user_id,
                application_id=call.application_id,
                tool=call.tool[:128],
                arguments_bytes=call.arguments_bytes,
                outcome=call.outcome,
                duration_ms=call.duration_ms,
                error=call.error[:500],
                created=call.created,
            )
            for call in calls
        ]
    )


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
