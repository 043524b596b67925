"""What operators read in admin and in server_stats: this server's name, readable durations,
failures first, only the tools the server serves, no empty token columns. Over HTTP, on a
server of its own so the audit holds exactly the calls made here."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.forms import form_fields
from tests.support.live import OPERATOR, LiveServer, create_user, prepare_server
from tests.support.mcp_http import MCPHttp
from tests.support.oauth import Browser, OAuthClient, obtain_token

TOOL_CALLS = "/admin/mcpapp/toolcall/"


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Browser, MCPHttp]]:
    tmp: Path = tmp_path_factory.mktemp("audited")
    server = prepare_server(tmp)
    create_user(server.env, *OPERATOR, is_staff=True, is_superuser=True)
    server.start()
    browser = Browser(server.url)
    assert browser.login(*OPERATOR).status_code == 302
    mcp = MCPHttp(server.url, obtain_token(server.url, browser)["access_token"])
    mcp.initialize()
    assert mcp.call("add", {"a": 1, "b": 2})["result"]["isError"] is False
    assert mcp.call("add", {"a": 1e308, "b": 1e308})["result"]["isError"] is True
    assert mcp.call("add", {"a": 3, "b": 4})["result"]["isError"] is False
    assert mcp.call("no_such_tool", {})["result"]["isError"] is True
    assert mcp.call("'; DROP TABLE x; --", {})["result"]["isError"] is True
    wait_for_audit(server, 5)
    yield server, browser, mcp
    mcp.close()
    browser.close()
    server.stop()


def wait_for_audit(server: LiveServer, count: int) -> None:
    """The audit may be written after the answer (in batches): wait until it holds `count` rows."""
    deadline = time.monotonic() + 20
    while server.sql("SELECT COUNT(*) FROM mcpapp_toolcall")[0][0] < count:
        assert time.monotonic() < deadline, "the tool calls were not audited"
        time.sleep(0.2)


def cells(page: str, column: str) -> list[str]:
    return [
        re.sub(r"<[^>]+>", "", cell).strip()
        for cell in re.findall(rf'class="field-{column}(?: [^"]*)?"[^>]*>(.*?)</t[dh]>', page, re.S)
    ]


def test_the_admin_carries_the_servers_name(audited: tuple[LiveServer, Browser, MCPHttp]) -> None:
    _server, browser, _mcp = audited
    page = browser.http.get("/admin/").text
    assert '<div id="site-name"><a href="/admin/">Django MCP server</a></div>' in page
    assert "<title>Operate the server | Django MCP server admin</title>" in page
    assert "Django administration" not in page


def test_tool_calls_list_failures_first_with_readable_durations(
    audited: tuple[LiveServer, Browser, MCPHttp],
) -> None:
    _server, browser, _mcp = audited
    page = browser.http.get(TOOL_CALLS)
    assert page.status_code == 200
    outcomes = cells(page.text, "outcome")
    assert outcomes.count("error") == 3 and outcomes.count("ok") >= 2
    assert outcomes == sorted(outcomes, key=lambda outcome: outcome == "ok")  # failures first
    durations = cells(page.text, "duration")
    assert len(durations) == len(outcomes)
    for duration in durations:
        assert re.fullmatch(r"\d+\.\d{1,2} (ms|s)", duration), duration


def test_the_tool_filter_lists_only_served_tools(audited: tuple[LiveServer, Browser, MCPHttp]) -> None:
    _server, browser, _mcp = audited
    page = browser.http.get(TOOL_CALLS).text
    assert "?tool=add" in page and "?tool=server_stats" in page
    assert "no_such_tool" not in page.split('id="changelist-filter"')[1]
    assert "DROP TABLE" not in page.split('id="changelist-filter"')[1]

    unknown = browser.http.get(TOOL_CALLS, params={"tool": "__unknown__"}).text
    assert sorted(cells(unknown, "tool")) == ["&#x27;; DROP TABLE x; --", "no_such_tool"]
    only_add = browser.http.get(TOOL_CALLS, params={"tool": "add"}).text
    assert cells(only_add, "tool") == ["add", "add", "add"]


def test_server_stats_counts_only_served_tools(audited: tuple[LiveServer, Browser, MCPHttp]) -> None:
    _server, _browser, mcp = audited
    result = mcp.call("server_stats", {"hours": 1})["result"]
    assert result["isError"] is False
    stats = result["structuredContent"]
    stats = stats.get("result", stats)
    assert [row["tool"] for row in stats["tools"]] == ["add"]
    (add,) = stats["tools"]
    assert (add["calls"], add["errors"]) == (3, 1)


def test_the_token_lists_have_no_empty_token_column(audited: tuple[LiveServer, Browser, MCPHttp]) -> None:
    _server, browser, _mcp = audited
    for changelist in ("/admin/oauth2_provider/accesstoken/", "/admin/oauth2_provider/refreshtoken/"):
        page = browser.http.get(changelist)
        assert page.status_code == 200
        assert "field-masked_token" not in page.text and "column-masked_token" not in page.text
        assert cells(page.text, "user") == ["operator"]
        assert cells(page.text, "application") == ["Test MCP client"]


def save_client(browser: Browser, pk: int, *, skip_consent: bool) -> str:
    """Save a client's change form as an operator does; the page it lands on (with its messages)."""
    url = f"/admin/oauthapp/application/{pk}/change/"
    page = browser.http.get(url)
    assert page.status_code == 200
    fields = [(name, value) for name, value in form_fields(page.text, "application_form")]
    fields = [(name, value) for name, value in fields if name != "skip_authorization"]
    if skip_consent:
        fields.append(("skip_authorization", "on"))
    saved = browser.http.post(url, data=dict(fields))
    assert saved.status_code == 302, saved.text
    return browser.http.get(saved.headers["location"]).text


def warnings_on(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'<li class="warning">(.*?)</li>', page, re.S)]


def test_saving_a_client_that_skips_consent_warns_every_time(
    audited: tuple[LiveServer, Browser, MCPHttp],
) -> None:
    server, browser, _mcp = audited
    client = OAuthClient.register(server.url, client_name="Our own dashboard")
    ((pk,),) = server.sql("SELECT id FROM oauthapp_application WHERE client_id = ?", (client.client_id,))
    warning = (
        "Our own dashboard skips the consent page. Users are never asked: anyone who logs in "
        "through this client hands it their account at once. Only for a client you run yourself; "
        "never for a dynamically registered one."
    )

    assert warnings_on(save_client(browser, pk, skip_consent=True)) == [warning]
    assert server.sql("SELECT skip_authorization FROM oauthapp_application WHERE id = ?", (pk,)) == [(1,)]
    # Not only when it is switched on: every save while it stays on says so again.
    assert warnings_on(save_client(browser, pk, skip_consent=True)) == [warning]
    assert warnings_on(save_client(browser, pk, skip_consent=False)) == []
    assert server.sql("SELECT skip_authorization FROM oauthapp_application WHERE id = ?", (pk,)) == [(0,)]
