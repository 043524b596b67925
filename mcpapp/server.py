"""The MCP protocol engine: the SDK's MCPServer with our tools, permissions and audit.

The SDK does JSON-RPC, version negotiation, capabilities and the tool schemas. We add: the
registry in `mcpapp.tools`, per-user tool visibility by Django permission, the caller for
tools (`current_caller()`), and an audit record for every call (buffered, `mcpapp.audit`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import inspect
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections
from django.templatetags.static import static
from django.utils import timezone
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    Icon,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    ToolAnnotations,
)

from .audit import AuditWriter, ToolCallRecord
from .identity import Caller, caller_of
from .metrics import METRICS
from .tools import TOOLS
from .tools.context import reset_caller, set_caller
from .wire import SERVER_UNAVAILABLE

logger = logging.getLogger(__name__)

# Plain (sync) tools run here: threads that keep their database connection between calls
# (close_old_connections honours DATABASE_CONN_MAX_AGE), sized by MCP_TOOL_THREADS.
TOOL_EXECUTOR = ThreadPoolExecutor(max_workers=settings.MCP_TOOL_THREADS, thread_name_prefix="mcp-tool")
UNKNOWN_TOOL = "(unknown)"
DATABASE_UNAVAILABLE = "The database is unavailable; try again in a few seconds"
SERVER_ICON = "mcpapp/icon.svg"


def load_tool(path: str) -> Callable[..., Any]:
    module_name, _, attribute = path.partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module_name), attribute)
    return fn


def _run_in_thread(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    close_old_connections()
    try:
        return fn(**kwargs)
    finally:
        close_old_connections()


def as_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A sync tool as a coroutine function that runs it in a tool thread, with the caller."""
    if inspect.iscoroutinefunction(fn):
        return fn

    @functools.wraps(fn)
    async def wrapper(**kwargs: Any) -> Any:
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(TOOL_EXECUTOR, context.run, _run_in_thread, fn, kwargs)
        except (OperationalError, InterfaceError) as exc:
            # The database is down (not a bug in the tool): a retryable JSON-RPC error, with
            # none of the driver's words (addresses, ports) in it.
            logger.warning("tool %s: the database is unavailable (%s)", fn.__name__, type(exc).__name__)
            raise MCPError(code=SERVER_UNAVAILABLE, message=DATABASE_UNAVAILABLE) from exc

    wrapper.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return wrapper


def description_of(fn: Callable[..., Any]) -> str:
    """The docstring as clients show it: paragraphs kept, the hard line breaks inside them not."""
    doc = inspect.getdoc(fn) or ""
    paragraphs = [re.sub(r"\s*\n\s*", " ", block.strip()) for block in re.split(r"\n\s*\n", doc)]
    return "\n\n".join(p for p in paragraphs if p)


def readable_argument_error(text: str) -> str:
    """The SDK's pydantic dump for refused arguments, as one line per field for a person."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or "validation error" not in lines[0]:
        return text
    problems: list[str] = []
    field_name: str | None = None
    for line in lines[1:]:
        if line.startswith("For further information"):
            continue
        if field_name is None:
            field_name = line
            continue
        reason = re.sub(r"\s*\[type=.*$", "", line)
        problems.append(f"{field_name}: {reason}")
        field_name = None
    if not problems:
        return text
    return "Invalid arguments: " + "; ".join(problems)


class DjangoMCPServer(MCPServer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.required_permissions: dict[str, str] = {}
        self.audit: AuditWriter | None = None

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        annotations = getattr(fn, "annotations", None)
        icon = getattr(fn, "icon", None)
        self.add_tool(
            as_async(fn),
            name=name,
            title=getattr(fn, "title", None),
            description=description_of(fn),
            annotations=annotations if isinstance(annotations, ToolAnnotations) else None,
            icons=[icon_for(icon)] if icon else None,
        )
        permission = getattr(fn, "required_permission", None)
        if permission:
            self.required_permissions[name] = permission

    @staticmethod
    def _permissions(caller: Caller | None) -> frozenset[str]:
        """Read with the caller's token (mcpapp.auth): no database read per request."""
        return caller.permissions if caller is not None else frozenset()

    async def _handle_list_tools(self, ctx: Any, params: PaginatedRequestParams | None) -> ListToolsResult:
        tools = await self.list_tools()
        if self.required_permissions:
            permissions = self._permissions(caller_from_context(ctx))
            tools = [
                t
                for t in tools
                if t.name not in self.required_permissions or self.required_permissions[t.name] in permissions
            ]
        return ListToolsResult(tools=tools)

    async def _handle_call_tool(self, ctx: Any, params: CallToolRequestParams) -> Any:
        caller = caller_from_context(ctx)
        name = params.name
        started = time.perf_counter()
        known = self._tool_manager.get_tool(name) is not None
        permission = self.required_permissions.get(name)
        if permission is not None and permission not in self._permissions(caller):
            self._audit(caller, name, params, "denied", started, "permission required", known=True)
            # Indistinguishable from a tool that does not exist: users without the
            # permission neither see nor call it.
            return CallToolResult(
                content=[TextContent(type="text", text=f"Unknown tool: {name}")], is_error=True
            )
        token = set_caller(caller)
        try:
            result = await super()._handle_call_tool(ctx, params)
        except MCPError as exc:
            # The call was made and failed (the database is away): it is recorded like any
            # other, and the record waits in the buffer until the database is back.
            self._audit(caller, name, params, "error", started, exc.error.message, known=known)
            raise
        finally:
            reset_caller(token)
        is_error = bool(getattr(result, "is_error", False))
        error = ""
        if is_error:
            content = getattr(result, "content", None) or []
            first = content[0] if content else None
            error = getattr(first, "text", "") or ""
            readable = readable_argument_error(error)
            if readable != error and isinstance(first, TextContent) and isinstance(result, CallToolResult):
                result.content[0] = TextContent(type="text", text=readable)
                error = readable
        self._audit(caller, name, params, "error" if is_error else "ok", started, error, known=known)
        return result

    def _audit(
        self,
        caller: Caller | None,
        tool: str,
        params: CallToolRequestParams,
        outcome: str,
        started: float,
        error: str,
        *,
        known: bool,
    ) -> None:
        elapsed = time.perf_counter() - started
        label = tool if known else UNKNOWN_TOOL  # metric labels stay a bounded set
        METRICS.tool_calls.labels(tool=label, outcome=outcome).inc()
        METRICS.tool_latency.labels(tool=label).observe(elapsed)
        if self.audit is None:
            return
        self.audit.record_call(
            ToolCallRecord(
                user_id=caller.user_id if caller else None,
                application_id=caller.application_id if caller else None,
                # The name is the client's choice and the error may quote it: bounded here,
                # made storable by any database when written (services.tool_calls_record).
                tool=tool[:128],
                arguments_bytes=len(json.dumps(params.arguments or {}, default=str)),
                outcome=outcome,
                duration_ms=elapsed * 1000,
                error=error[:500],
                created=timezone.now(),
                call_id=uuid.uuid4().hex,
            )
        )


def icon_for(source: str) -> Icon:
    """An icon from a static file path of ours (served by this server) or an https URL."""
    url = source if source.startswith("https://") else f"{settings.PUBLIC_URL}{static(source)}"
    mime = "image/svg+xml" if source.endswith(".svg") else "image/png"
    return Icon(src=url, mime_type=mime)


def caller_from_context(ctx: Any) -> Caller | None:
    """The caller the bearer-token layer put on the HTTP request that carried this message."""
    request = getattr(ctx, "request", None)
    scope = getattr(request, "scope", None)
    return caller_of(scope) if scope is not None else None


@functools.cache
def build_server() -> DjangoMCPServer:
    server = DjangoMCPServer(
        name=settings.MCP_SERVER_NAME,
        title=settings.MCP_SERVER_NAME,
        version="0.1.0",
        instructions="Tools that act as the logged-in user of this Django server.",
        website_url=f"{settings.PUBLIC_URL}/",
        icons=[icon_for(SERVER_ICON)],
    )
    for name, path in TOOLS.items():
        server.register(name, load_tool(path))
    if settings.MCP_CONFORMANCE_FIXTURES:
        from .conformance import install_fixtures

        install_fixtures(server)
    return server
