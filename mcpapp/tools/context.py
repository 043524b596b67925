"""Who is calling a tool: set by the MCP session for the duration of every tool call.

Tools are plain typed functions; one that needs the caller reads `current_caller()`.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from mcp.server.mcpserver.exceptions import ToolError

from mcpapp.identity import Caller

__all__ = ["Caller", "ToolError", "current_caller"]


_caller: ContextVar[Caller | None] = ContextVar("mcp_caller", default=None)


def current_caller() -> Caller:
    caller = _caller.get()
    if caller is None:
        raise ToolError("This tool needs an authenticated MCP session")
    return caller


def set_caller(caller: Caller | None) -> Token[Caller | None]:
    return _caller.set(caller)


def reset_caller(token: Token[Caller | None]) -> None:
    _caller.reset(token)


def requires_permission(permission: str):  # type: ignore[no-untyped-def]
    """Mark a tool as usable only by users holding `permission` (granted in Django admin)."""

    def decorate(fn):  # type: ignore[no-untyped-def]
        fn.required_permission = permission
        return fn

    return decorate
