"""The MCP protocol engine: the SDK's MCPServer with our tools, permissions and audit.

The SDK does JSON-RPC, version negotiation, capabilities and the tool schemas. We add: the
registry in `mcpapp.tools`, per-user tool visibility by Django permission, the caller
context for tools, and an audit record for every call.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from mcp.server.mcpserver import MCPServer
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
)

from . import selectors, services
from .tools import TOOLS
from .tools.context import Caller, set_caller

logger = logging.getLogger(__name__)


def load_tool(path: str) -> Callable[..., Any]:
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _as_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a plain (sync) tool in a worker thread with Django's connection handling."""
    if inspect.iscoroutinefunction(fn):
        return fn
    run = database_sync_to_async(fn, thread_sensitive=False)

    @functools.wraps(fn)
    async def wrapper(**kwargs: Any) -> Any:
        return await run(**kwargs)

    wrapper.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return wrapper


def caller_from_context(ctx: Any) -> Caller | None:
    """The caller our auth middleware put on the HTTP request that carried this message."""
    request = getattr(ctx, "request", None)
    scope = getattr(request, "scope", None) or {}
    user = scope.get("user")
    token = getattr(user, "access_token", None)
    claims = getattr(token, "claims", None) or {}
    if not claims.get("mcp_user_id"):
        return None
    return Caller(
        user_id=int(claims["mcp_user_id"]),
        username=claims["username"],
        client_id=token.client_id,
        client_name=claims["client_name"],
        scopes=tuple(token.scopes),
        application_id=int(claims["application_id"]),
    )


class DjangoMCPServer(MCPServer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.required_permissions: dict[str, str] = {}

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        self.add_tool(_as_async(fn), name=name, description=inspect.getdoc(fn))
        permission = getattr(fn, "required_permission", None)
        if permission:
            self.required_permissions[name] = permission

    async def _allowed(self, caller: Caller | None, tool: str) -> bool:
        permission = self.required_permissions.get(tool)
        if permission is None:
            return True
        if caller is None:
            return False
        permissions = await database_sync_to_async(selectors.user_permissions)(user_id=caller.user_id)
        return permission in permissions

    async def _handle_list_tools(self, ctx: Any, params: PaginatedRequestParams | None) -> ListToolsResult:
        caller = caller_from_context(ctx)
        tools = await self.list_tools()
        if self.required_permissions:
            permissions: frozenset[str] = frozenset()
            if caller is not None:
                permissions = await database_sync_to_async(selectors.user_permissions)(user_id=caller.user_id)
            tools = [
                t
                for t in tools
                if t.name not in self.required_permissions or self.required_permissions[t.name] in permissions
            ]
        return ListToolsResult(tools=tools)

    async def _handle_call_tool(self, ctx: Any, params: CallToolRequestParams) -> Any:
        caller = caller_from_context(ctx)
        name = params.name
        size = len(json.dumps(params.arguments or {}, default=str))
        started = time.perf_counter()
        if not await self._allowed(caller, name):
            await self._audit(caller, name, size, "denied", started, "permission required")
            # Indistinguishable from a tool that does not exist: users without the
            # permission neither see nor call it.
            return CallToolResult(
                content=[TextContent(type="text", text=f"Unknown tool: {name}")], is_error=True
            )
        set_caller(caller)
        try:
            result = await super()._handle_call_tool(ctx, params)
        finally:
            set_caller(None)
        is_error = bool(getattr(result, "is_error", False))
        error = ""
        if is_error:
            content = getattr(result, "content", None) or []
            error = getattr(content[0], "text", "") if content else ""
        await self._audit(caller, name, size, "error" if is_error else "ok", started, error)
        return result

    async def _audit(
        self, caller: Caller | None, tool: str, size: int, outcome: str, started: float, error: str
    ) -> None:
        try:
            await database_sync_to_async(services.tool_call_record)(
                user_id=caller.user_id if caller else None,
                application_id=caller.application_id if caller else None,
                tool=tool,
                arguments_bytes=size,
                outcome=outcome,
                duration_ms=(time.perf_counter() - started) * 1000,
                error=error,
            )
        except Exception:
            logger.exception("could not record the call of tool %s", tool)


@functools.cache
def build_server() -> DjangoMCPServer:
    server = DjangoMCPServer(
        name=settings.MCP_SERVER_NAME,
        version="0.1.0",
        instructions="Tools that act as the logged-in user of this Django server.",
    )
    for name, path in TOOLS.items():
        server.register(name, load_tool(path))
    if settings.MCP_CONFORMANCE_FIXTURES:
        from .conformance import install_fixtures

        install_fixtures(server)
    return server
