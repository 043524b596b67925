"""`make run` as a newcomer runs it, in a fresh copy of this checkout (tests/support/checkout.py):
the port it is given is the one every URL names, it says little and only true things, a copied
.env.example is explained in one line, configuration errors are one line, it reloads, and
Ctrl-C stops it cleanly. Its output is held to the log check like every live server's.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.checkout import Make, accepts_connections, copy_checkout, group_alive, newcomer_env
from tests.support.live import ROOT, free_port
from tests.support.mcp_http import MCPHttp
from tests.support.oauth import Browser, obtain_token


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return copy_checkout(tmp_path / "checkout")


def make_run(checkout: Path, port: int, name: str) -> Make:
    env = newcomer_env(checkout.parent / "home")
    return Make(checkout, ["run", f"PORT={port}"], env, name=name).start()


def claude_config(page: str) -> dict:
    match = re.search(r'<pre id="claude-config">(.*?)</pre>', page, re.S)
    assert match, page
    return json.loads(html.unescape(match.group(1)))


def test_make_run_advertises_the_port_it_was_given_everywhere(checkout: Path) -> None:
    port = free_port()
    run = make_run(checkout, port, "run")
    try:
        run.wait_for("Serving on")
        origin = f"http://localhost:{port}"  # PUBLIC_URL follows PORT
        local = f"http://127.0.0.1:{port}"
        metadata = httpx.get(f"{local}/.well-known/oauth-authorization-server").json()
        assert metadata["issuer"] == origin
        for key in (
            "authorization_endpoint",
            "token_endpoint",
            "registration_endpoint",
            "revocation_endpoint",
        ):
            assert metadata[key].startswith(f"{origin}/"), (key, metadata[key])
        for path in ("/mcp", "/sse"):
            resource = httpx.get(f"{local}/.well-known/oauth-protected-resource{path}").json()
            assert resource["resource"] == f"{origin}{path}"
            assert resource["authorization_servers"] == [origin]
        challenge = httpx.post(f"{local}/mcp").headers["www-authenticate"]
        assert f'resource_metadata="{origin}/.well-known/oauth-protected-resource/mcp"' in challenge
        home = httpx.get(f"{local}/").text
        assert claude_config(home)["mcpServers"]["django-mcp"]["args"] == ["mcp-remote", f"{origin}/mcp"]
        assert "8787" not in home
        assert f"Serving on {local}  (open {origin}/, MCP endpoint {origin}/mcp)" in run.out()
    finally:
        run.stop()


def test_make_run_says_serving_once_bound_and_prints_the_password_only_the_first_time(checkout: Path) -> None:
    port = free_port()
    env = newcomer_env(checkout.parent / "home")
    first = Make(checkout, ["run", f"PORT={port}"], env, name="first")
    # A client started on that line connects: tried once, the instant the line is read.
    connected = first.on_line("Serving on", lambda: accepts_connections(port))
    first.start()
    try:
        out = first.wait_for("Serving on")
        assert connected.done.wait(10)
        assert connected.result is True, "'Serving on' was printed before the port accepted connections"
    finally:
        first.stop()
    username, password = (checkout / ".local-login").read_text().split()
    start = out.split("Serving on")[0]
    assert f"Local login: username {username}  password {password}" in start
    # Migrations take one short line, not one per migration.
    assert "Applying" not in out
    assert start.count("Database migrations: up to date.") == 1
    assert len(start.splitlines()) <= 4, start

    second = make_run(checkout, port, "second")
    try:
        again = second.wait_for("Serving on")
    finally:
        second.stop()
    assert password not in again + second.err()
    assert f"Local login: username {username} (the password is in .local-login)" in again


def test_make_run_with_a_copied_env_example_says_in_one_line_what_to_change(checkout: Path) -> None:
    dotenv = checkout / ".env"
    shutil.copy(checkout / ".env.example", dotenv)
    port = free_port()

    refused = make_run(checkout, port, "refused")
    assert refused.wait() != 0
    ours = [line for line in refused.err().splitlines() if not line.startswith("make: ***")]
    assert len(ours) == 1, refused.err()
    assert ours[0].startswith(
        "Configuration error: SECRET_KEY must be set to a random value of at least 32 characters"
    )
    assert "set it in .env" in ours[0] and "set DEBUG=true there" in ours[0]
    assert not (checkout / "db.sqlite3").exists()  # it stopped before touching anything

    # As the line says. The file's PUBLIC_URL still names 8787: the server says so at start.
    dotenv.write_text(dotenv.read_text().replace("\nDEBUG=false\n", "\nDEBUG=true\n"))
    pinned = make_run(checkout, port, "pinned")
    try:
        pinned.wait_for("Serving on")
    finally:
        pinned.stop()
    assert (
        f"Warning: PUBLIC_URL (http://localhost:8787, from .env) names port 8787 but the server listens "
        f"on {port}, so clients will fail discovery: remove PUBLIC_URL (it follows PORT)"
    ) in pinned.err()

    # As the warning says.
    dotenv.write_text(re.sub(r"(?m)^PUBLIC_URL=.*\n", "", dotenv.read_text()))
    fixed = make_run(checkout, port, "fixed")
    try:
        fixed.wait_for("Serving on")
        metadata = httpx.get(f"http://127.0.0.1:{port}/.well-known/oauth-authorization-server").json()
        assert metadata["issuer"] == f"http://localhost:{port}"
    finally:
        fixed.stop()
    assert "Warning" not in fixed.err()


def test_make_run_takes_its_port_from_env_as_the_settings_do(checkout: Path) -> None:
    """.env.example says PORT there sets make run's port; the command line still wins."""
    port, other = free_port(), free_port()
    (checkout / ".env").write_text(f"DEBUG=true\nPORT={port}\n")
    env = newcomer_env(checkout.parent / "home")
    from_file = Make(checkout, ["run"], env, name="from-env-file").start()
    try:
        from_file.wait_for("Serving on")
        metadata = httpx.get(f"http://127.0.0.1:{port}/.well-known/oauth-authorization-server").json()
        assert metadata["issuer"] == f"http://localhost:{port}"
    finally:
        from_file.stop()
    assert f"Serving on http://127.0.0.1:{port} " in from_file.out()

    given = make_run(checkout, other, "from-command-line")
    try:
        given.wait_for("Serving on")
    finally:
        given.stop()
    assert f"Serving on http://127.0.0.1:{other} " in given.out()


BAD_SETTINGS = [
    ({"PORT": "eighty"}, "Configuration error: PORT='eighty' is not a whole number"),
    ({"PORT": "70000"}, "Configuration error: PORT=70000 is not a TCP port (1-65535)"),
    ({"DEBUG": "maybe"}, "Configuration error: DEBUG='maybe' is not a boolean (use true or false)"),
    (
        {"PUBLIC_URL": "mcp.example.com"},
        "Configuration error: PUBLIC_URL='mcp.example.com' must be an origin such as https://mcp.example.com",
    ),
    (
        {"GITHUB_CLIENT_ID": "Iv1.0123456789abcdef"},
        "Configuration error: Set both GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET, or neither.",
    ),
    (
        {"DEBUG": "false", "SECRET_KEY": "short"},
        "Configuration error: SECRET_KEY must be set to a random value of at least 32 characters "
        "when DEBUG is false: set it in the environment",
    ),
    (
        {"DATABASE_URL": "foo://bar"},
        "Configuration error: DATABASE_URL (from the environment) has an unknown scheme 'foo'",
    ),
    (
        # The password is never echoed.
        {"DATABASE_URL": "postgres://mcp:s3cret@db:port/mcp"},
        "Configuration error: DATABASE_URL (from the environment) is not a valid URL",
    ),
    (
        {"LOG_LEVEL": "LOUD"},
        "Configuration error: LOG_LEVEL='LOUD' is not a log level "
        "(use DEBUG, INFO, WARNING, ERROR or CRITICAL)",
    ),
    (
        {"REDIS_URL": "notaurl"},
        "Configuration error: REDIS_URL (from the environment) is not a Redis URL",
    ),
]


@pytest.mark.parametrize("command", [["check"], ["migrate", "--noinput"], ["ensure_local_user"], ["serve"]])
@pytest.mark.parametrize(
    ("bad", "message"),
    BAD_SETTINGS,
    ids=[
        "port-word",
        "port-range",
        "debug",
        "public-url",
        "github",
        "secret",
        "database-scheme",
        "database-port",
        "log-level",
        "redis-url",
    ],
)
def test_every_configuration_error_is_one_line_and_a_failure_exit(
    tmp_path: Path, command: list[str], bad: dict[str, str], message: str
) -> None:
    env = newcomer_env(tmp_path, DOTENV_PATH=str(tmp_path / "no.env"), **bad)
    result = subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "s3cret" not in result.stderr
    assert result.stdout == ""


def test_make_run_restarts_the_server_when_code_or_a_template_changes(checkout: Path) -> None:
    port = free_port()
    home_url = f"http://127.0.0.1:{port}/"
    run = make_run(checkout, port, "reload")
    try:
        run.wait_for("Serving on")
        assert "Watching mcpapp/, mcpsite/, oauthapp/, templates/ for changes" in run.out()
        assert "<h1>Django MCP server</h1>" in httpx.get(home_url).text

        settings_py = checkout / "mcpsite" / "settings.py"
        settings_py.write_text(settings_py.read_text() + '\nMCP_SERVER_NAME = "Renamed by a code change"\n')
        run.wait_for("Serving on", count=2)
        assert "Restarting: mcpsite/settings.py changed" in run.out()
        assert "<h1>Renamed by a code change</h1>" in httpx.get(home_url).text

        template = checkout / "templates" / "home.html"
        template.write_text(
            template.read_text().replace("<h2>MCP endpoints</h2>", "<h2>Edited endpoints</h2>")
        )
        run.wait_for("Serving on", count=3)
        assert "Restarting: templates/home.html changed" in run.out()
        assert "<h2>Edited endpoints</h2>" in httpx.get(home_url).text
    finally:
        run.stop()


def test_ctrl_c_stops_make_run_cleanly_and_writes_the_last_audit_records(checkout: Path) -> None:
    """A terminal's Ctrl-C reaches the whole group: make, the reloader and the server; the
    reloader then sends the server a SIGINT of its own. The server must take both as one
    request to stop (a call in flight finishes, the audit buffer is written), not as the
    second, impatient Ctrl-C that exits on the spot."""
    port = free_port()
    # The audit is written every 30 s here: the calls' records can only reach the database
    # through the shutdown's final write. The fixture tools give a call that takes a while.
    env = newcomer_env(checkout.parent / "home", MCP_AUDIT_FLUSH_MS="30000", MCP_CONFORMANCE_FIXTURES="true")
    run = Make(checkout, ["run", f"PORT={port}"], env, name="interrupted").start()
    try:
        run.wait_for("Serving on")
        url = f"http://127.0.0.1:{port}"
        username, password = (checkout / ".local-login").read_text().split()
        browser = Browser(url)
        assert browser.login(username, password).status_code == 302
        mcp = MCPHttp(url, obtain_token(url, browser)["access_token"], version="2025-11-25")
        browser.close()
        mcp.initialize()
        assert mcp.call("add", {"a": 20, "b": 22})["result"]["content"][0]["text"] == "42"

        inside, answer = threading.Event(), []

        def slow_call() -> None:
            body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call"}
            body["params"] = {"name": "test_sleep", "arguments": {"seconds": 0.5}}
            with mcp.http.stream("POST", "/mcp", json=body, headers=mcp.headers()) as response:
                lines = response.iter_lines()
                answer.append(next(lines))  # the stream's priming event: the call is running
                inside.set()
                answer.extend(lines)

        caller = threading.Thread(target=slow_call, daemon=True)
        caller.start()
        assert inside.wait(10), "the slow call did not start"
        assert run.process is not None
        os.killpg(run.process.pid, signal.SIGINT)  # what the terminal does
        deadline = time.monotonic() + 10  # watchfiles would SIGKILL a server still there after 5 s
        while group_alive(run.process.pid):
            assert time.monotonic() < deadline, f"make run still running after Ctrl-C:\n{run.err()}"
            time.sleep(0.1)
        caller.join(5)
        mcp.close()
    finally:
        run.stop()
    assert "slept 0.5 s" in "\n".join(answer), answer
    assert run.err().count("SIGINT: stopping") == 1, run.err()
    with sqlite3.connect(checkout / "db.sqlite3") as db:
        rows = db.execute("SELECT tool, outcome FROM mcpapp_toolcall ORDER BY id").fetchall()
    assert rows == [("add", "ok"), ("test_sleep", "ok")]
