"""The add tool over real MCP: sums are numbers, and a sum no JSON number can carry is a tool error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.live import LiveServer
from tests.support.mcp_http import MCPHttp
from tests.support.oauth import Browser, obtain_token


@pytest.fixture
def mcp(server: LiveServer, alice_browser: Browser) -> Iterator[MCPHttp]:
    client = MCPHttp(server.url, obtain_token(server.url, alice_browser)["access_token"])
    client.initialize()
    yield client
    client.close()


@pytest.mark.parametrize(("a", "b", "total"), [(23, 19, "42"), (0.5, 0.25, "0.75"), (-1e308, 1e308, "0")])
def test_add_answers_the_sum(mcp: MCPHttp, a: float, b: float, total: str) -> None:
    result = mcp.call("add", {"a": a, "b": b})["result"]
    assert result["isError"] is False
    assert result["content"] == [{"type": "text", "text": total}]


def test_add_refuses_a_sum_too_large_for_a_number_instead_of_answering_null(mcp: MCPHttp) -> None:
    result = mcp.call("add", {"a": 1e308, "b": 1e308})["result"]
    assert result["isError"] is True
    assert "The sum is too large to represent" in result["content"][0]["text"]
    assert result.get("structuredContent") in (None, {})
