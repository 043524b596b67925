"""Real MCP clients against a live server: each logs in through our login form and consent page
(or brings a token from that flow) and calls add(23, 19).

- the `mcp` Python SDK client, over /mcp (Streamable HTTP) and /sse (legacy SSE);
- mcp-remote (what Claude Desktop runs), over both, with its browser step done by
  tests/support/fake_browser.py, and a second start that must reuse the stored tokens;
- the MCP Inspector CLI with a bearer token, over both.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.conftest import ALICE
from tests.support.live import ROOT, LiveServer, free_port, manage
from tests.support.node import SUPPORT, node_command, node_env, require_node_tools, run_bounded
from tests.support.oauth import Browser, obtain_token
from tests.support.sdk_client import call_tool
from tests.support.stdio import StdioClient

pytestmark = pytest.mark.e2e

ADD = {"a": 23, "b": 19}


def access_log_hits(server: LiveServer, request: str) -> int:
    """How many times daphne logged e.g. `GET /authorize` so far."""
    return server.log_path.read_text(errors="replace").count(f'"{request}')


# --- the Python SDK ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["mcp", "sse"])
def test_sdk_client_logs_in_and_adds_23_and_19(
    server: LiveServer, alice_browser: Browser, transport: str
) -> None:
    authorize_hits = access_log_hits(server, "POST /authorize")

    result, tools = anyio.run(
        lambda: call_tool(f"{server.url}/{transport}", alice_browser, "add", ADD, transport=transport)
    )

    assert result.is_error is False
    assert [c.text for c in result.content] == ["42"]
    assert "add" in tools
    # The conformance fixtures are off unless MCP_CONFORMANCE_FIXTURES says otherwise.
    assert not [name for name in tools if name.startswith("test_")]
    # It went through the consent page: one approval POSTed.
    assert access_log_hits(server, "POST /authorize") == authorize_hits + 1


# --- mcp-remote -------------------------------------------------------------------------------


def start_mcp_remote(url: str, transport: str, callback_port: int, workdir: Path, name: str) -> StdioClient:
    env = node_env(
        MCP_REMOTE_CONFIG_DIR=str(workdir / "mcp-auth"),
        BROWSER=str(SUPPORT / "fake_browser.py"),
        FAKE_BROWSER_USER=ALICE[0],
        FAKE_BROWSER_PASSWORD=ALICE[1],
        FAKE_BROWSER_LOG=str(workdir / "browser.log"),
        HOME=str(workdir),
    )
    return StdioClient(
        node_command("mcp-remote", url, str(callback_port), "--transport", transport, "--auth-timeout", "45"),
        env=env,
        cwd=ROOT,
        stderr_path=workdir / f"{name}.stderr",
    )


def browser_visits(workdir: Path) -> list[dict]:
    log = workdir / "browser.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def add_through(client: StdioClient) -> tuple[list[str], str]:
    client.initialize(timeout=60)
    tools = [tool["name"] for tool in client.request("tools/list")["tools"]]
    result = client.request("tools/call", {"name": "add", "arguments": ADD})
    assert result.get("isError") is False, result
    return tools, result["content"][0]["text"]


@pytest.mark.parametrize(("path", "transport"), [("sse", "sse-only"), ("mcp", "http-only")])
def test_mcp_remote_logs_in_through_the_browser_once_and_then_reuses_its_tokens(
    server: LiveServer, tmp_path: Path, path: str, transport: str
) -> None:
    require_node_tools()
    url = f"{server.url}/{path}"
    callback_port = free_port()
    before = {r: access_log_hits(server, r) for r in ("POST /register", "GET /authorize", "POST /token")}

    first = start_mcp_remote(url, transport, callback_port, tmp_path, "first")
    try:
        tools, total = add_through(first)
    finally:
        first.close()

    assert total == "42"
    assert "add" in tools
    (visit,) = browser_visits(tmp_path)
    assert "error" not in visit, visit
    assert visit["url"].startswith(f"{server.url}/authorize?")
    assert f"redirect_uri=http%3A%2F%2Flocalhost%3A{callback_port}%2Foauth%2Fcallback" in visit["url"]
    # Sent to log in, logged in, approved on the consent page, landed on mcp-remote's callback.
    assert [(method, page) for method, page, _ in visit["visited"]] == [
        ("GET", "/authorize"),
        ("GET", "/login"),
        ("POST", "/login"),
        ("GET", "/authorize"),
        ("POST", "/authorize"),
        ("GET", "/oauth/callback"),
    ]
    assert visit["visited"][-1][2] == 200
    assert access_log_hits(server, "POST /register") == before["POST /register"] + 1
    (stored,) = (tmp_path / "mcp-auth" / "mcp-remote-v1").glob("*_tokens.json")
    assert json.loads(stored.read_text())["access_token"]

    after_first = {r: access_log_hits(server, r) for r in before}
    second = start_mcp_remote(url, transport, callback_port, tmp_path, "second")
    try:
        tools, total = add_through(second)
    finally:
        second.close()

    assert total == "42"
    # No login the second time: the browser was not opened, nothing was registered or authorized.
    assert len(browser_visits(tmp_path)) == 1
    assert {r: access_log_hits(server, r) for r in before} == after_first


# --- the MCP Inspector CLI --------------------------------------------------------------------


def inspector(server: LiveServer, path: str, token: str, home: Path, *args: str) -> tuple[int, str, str]:
    transport = {"mcp": "http", "sse": "sse"}[path]
    completed = run_bounded(
        node_command(
            "inspector",
            "--cli",
            f"{server.url}/{path}",
            "--transport",
            transport,
            "--header",
            f"Authorization: Bearer {token}",
            "--format",
            "json",
            *args,
        ),
        env=node_env(HOME=str(home), MCP_INSPECTOR_SECRET_STORE="memory", INSPECTOR_SKIP_CLIENT_INSTALL="1"),
        timeout=60,
    )
    return completed.returncode, completed.stdout, completed.stderr


@pytest.mark.parametrize("path", ["mcp", "sse"])
def test_inspector_cli_with_a_bearer_token_lists_tools_and_adds(
    server: LiveServer, alice_browser: Browser, tmp_path: Path, path: str
) -> None:
    require_node_tools()
    token = obtain_token(server.url, alice_browser, resource=f"{server.url}/{path}")["access_token"]

    code, out, err = inspector(server, path, token, tmp_path, "--method", "tools/list")
    assert code == 0, err
    tools = json.loads(out)["result"]["tools"]
    assert "add" in [tool["name"] for tool in tools]

    code, out, err = inspector(
        server, path, token, tmp_path, "--method", "tools/call", "--tool-name", "add",
        "--tool-arg", "a=23", "--tool-arg", "b=19",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["result"]["content"] == [{"type": "text", "text": "42"}]


@pytest.mark.parametrize("path", ["mcp", "sse"])
def test_inspector_cli_with_a_personal_access_token_adds(
    server: LiveServer, tmp_path: Path, path: str
) -> None:
    """The README's personal-token use: one token, made by the command, good on both transports."""
    require_node_tools()
    token = manage(server.env, "create_personal_token", "alice", "--name", f"inspector {path}").strip()
    code, out, err = inspector(
        server, path, token, tmp_path, "--method", "tools/call", "--tool-name", "add",
        "--tool-arg", "a=23", "--tool-arg", "b=19",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["result"]["content"] == [{"type": "text", "text": "42"}]


def test_inspector_cli_with_a_bad_token_is_refused(server: LiveServer, tmp_path: Path) -> None:
    require_node_tools()
    code, out, err = inspector(server, "mcp", "not-a-token", tmp_path, "--method", "tools/list")
    assert code == 3, (out, err)  # the Inspector's exit code for auth_required
    assert "auth_required" in err
