"""Who is calling a tool: set by the MCP session for the duration of every tool call.

Tools are plain typed functions; one that needs the caller reads `current_caller()`.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from mcp.server.mcpserver.exceptions import ToolError

__all__ = ["Caller", "ToolError", "current_caller"]


@dataclass(frozen=True)
class Caller:
    user_id: int
    username: str
    client_id: str
    client_name: str
    scopes: tuple[str, ...]
    application_id: int = 0


_caller: ContextVar[Caller | None] = ContextVar("mcp_caller", default=None)


def current_caller() -> Caller:
    caller = _caller.get()
    if caller is None:
        raise ToolError("This tool needs an authenticated MCP session")
    return caller


def set_caller(caller: Caller | None) -> None:
    _caller.set(caller)


def requires_permission(permission: str):  # type: ignore[no-untyped-def]
    """Mark a tool as usable only by users holding `permission` (granted in Django admin)."""

    def decorate(fn):  # type: ignore[no-untyped-def]
        fn.required_permission = permission
        return fn

    return decorate
