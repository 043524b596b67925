"""The tool registry: every MCP tool this server offers, by name, in one greppable dict.

Adding a tool (also in the README):
1. Write `mcpapp/tools/<name>.py` with one plain typed function; its docstring becomes the
   tool's description and its type hints the input schema. Read the caller with
   `current_caller()`; raise `ToolError("...")` for a failure the user should read.
2. If only some users may use it, decorate it with `@requires_permission("app.codename")`
   and add the permission (a model `Meta.permissions` entry plus a migration).
3. Add it to `TOOLS` below and to the contract test's expectations if it needs arguments.
"""

from __future__ import annotations

TOOLS: dict[str, str] = {
    "add": "mcpapp.tools.add:add",
    "whoami": "mcpapp.tools.whoami:whoami",
    "server_stats": "mcpapp.tools.server_stats:server_stats",
    "github_user": "mcpapp.tools.github_user:github_user",
}
