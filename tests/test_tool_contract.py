"""Every registered tool honours the tool contract, and the registry is what the server serves."""

from __future__ import annotations

import inspect

import pytest

from mcpapp.server import build_server, load_tool
from mcpapp.tools import TOOLS


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_each_tool_is_a_documented_typed_function(name: str) -> None:
    fn = load_tool(TOOLS[name])
    assert callable(fn)
    assert inspect.getdoc(fn), f"{name} needs a docstring: it is the tool's description"
    signature = inspect.signature(fn)
    for parameter in signature.parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty, f"{name}.{parameter.name} needs a type"
    assert signature.return_annotation is not inspect.Signature.empty, f"{name} needs a return type"


def test_the_server_serves_exactly_the_registry() -> None:
    import anyio

    server = build_server()
    tools = anyio.run(server.list_tools)
    assert {tool.name for tool in tools} == set(TOOLS)
    for tool in tools:
        assert tool.description
        assert tool.input_schema["type"] == "object"
