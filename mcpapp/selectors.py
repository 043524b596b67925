"""Reads for the MCP server."""

from __future__ import annotations

from django.contrib.auth import get_user_model


def user_permissions(*, user_id: int) -> frozenset[str]:
    """The permission names ("app.codename") a user holds; empty for inactive or unknown users."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return frozenset()
    return frozenset(user.get_all_permissions())
