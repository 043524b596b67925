"""Who is calling a tool: set by the MCP session for the duration of every tool call.

Tools are plain typed functions; one that needs the caller reads `current_caller()`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, TypeVar

from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

from mcpapp.identity import Caller

__all__ = ["Caller", "ToolError", "current_caller", "describe", "requires_permission"]

F = TypeVar("F", bound=Callable[..., Any])


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


def describe(
    *,
    title: str,
    read_only: bool,
    destructive: bool = False,
    idempotent: bool | None = None,
    open_world: bool | None = None,
    icon: str | None = None,
) -> Callable[[F], F]:
    """What clients (and the consent page) show of a tool besides its docstring: a title, and
    the MCP annotations (hints, not guarantees) that tell a client whether the tool only
    reads, may destroy, can be retried safely, or reaches beyond this server. `icon` is a
    static file path (e.g. "mcpapp/tool-github.svg") or an https URL."""

    def decorate(fn: F) -> F:
        fn.title = title  # type: ignore[attr-defined]
        fn.annotations = ToolAnnotations(  # type: ignore[attr-defined]
            title=title,
            read_only_hint=read_only,
            destructive_hint=destructive if not read_only else False,
            idempotent_hint=idempotent,
            open_world_hint=open_world,
        )
        fn.icon = icon  # type: ignore[attr-defined]
        return fn

    return decorate


def requires_permission(permission: str):  # type: ignore[no-untyped-def]
    """Mark a tool as usable only by users holding `permission` (granted in Django admin)."""

    def decorate(fn):  # type: ignore[no-untyped-def]
        fn.required_permission = permission
        return fn

    return decorate
