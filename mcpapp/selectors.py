"""Reads for the MCP server."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model


def user_permissions(*, user_id: int) -> frozenset[str]:
    """The permission names ("app.codename") a user holds; empty for inactive or unknown users."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return frozenset()
    return frozenset(user.get_all_permissions())


@dataclass(frozen=True)
class ToolSummary:
    """A tool as a person sees it before approving a client: what it is, whether it changes
    anything."""

    name: str
    title: str
    description: str
    read_only: bool
    destructive: bool
    icon_url: str | None


def tools_for_user(*, user_id: int) -> list[ToolSummary]:
    """The tools this user may call (a permission-gated one only with its permission)."""
    from .server import build_server

    server = build_server()
    permissions = user_permissions(user_id=user_id)
    summaries = []
    for tool in server._tool_manager.list_tools():
        required = server.required_permissions.get(tool.name)
        if required is not None and required not in permissions:
            continue
        hints = tool.annotations
        summaries.append(
            ToolSummary(
                name=tool.name,
                title=tool.title or tool.name,
                description=(tool.description or "").split("\n\n")[0],
                read_only=bool(hints and hints.read_only_hint),
                destructive=bool(hints and hints.destructive_hint),
                icon_url=tool.icons[0].src if tool.icons else None,
            )
        )
    return summaries


def server_icon_url() -> str:
    from .server import SERVER_ICON, icon_for

    return icon_for(SERVER_ICON).src
