"""The README's commands, run as written (with the live server's origin for localhost:8787)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.live import ROOT, LiveServer
from tests.support.node import node_env, require_node_tools, run_bounded

README = ROOT / "README.md"
README_ORIGIN = "http://localhost:8787"


def readme_block(containing: str) -> str:
    """The one ```sh block of the README that contains `containing`."""
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S) if containing in b]
    assert len(blocks) == 1, f"{len(blocks)} README sh blocks contain {containing!r}"
    return blocks[0]


def json_documents(text: str) -> list[Any]:
    """The JSON documents printed one after another."""
    decoder, documents, index = json.JSONDecoder(), [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
    return documents


@pytest.mark.e2e
def test_the_readme_inspector_cli_lines_work_as_written_with_one_token_for_both_endpoints(
    server: LiveServer, tmp_path: Path
) -> None:
    require_node_tools()
    script = readme_block("inspector --cli")
    assert "/mcp --transport http" in script and "/sse --transport sse" in script
    # The README's own way to get the token, for this server's user.
    create = readme_block("create_personal_token admin").strip()
    assert create.startswith(".venv/bin/python manage.py create_personal_token admin ")
    made = subprocess.run(
        [sys.executable, "manage.py", *shlex.split(create)[2:]],
        cwd=ROOT,
        env={**server.env, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode != 0 and "admin" in made.stderr  # no such user on the test server
    made = subprocess.run(
        [sys.executable, "manage.py", *shlex.split(create.replace(" admin ", " alice "))[2:]],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = made.stdout.strip()
    assert token and "\n" not in token

    completed = run_bounded(
        ["bash", "-e", "-c", script.replace(README_ORIGIN, server.url)],
        env=node_env(
            HOME=str(tmp_path),
            TOKEN=token,
            MCP_INSPECTOR_SECRET_STORE="memory",
            INSPECTOR_SKIP_CLIENT_INSTALL="1",
        ),
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    listed, called = json_documents(completed.stdout)
    assert "add" in [tool["name"] for tool in listed["tools"]]
    assert called["content"] == [{"type": "text", "text": "42"}]
    assert called.get("isError") is not True


def test_the_readme_health_check_answers_ok(server: LiveServer, tmp_path: Path) -> None:
    command = readme_block("/healthz").strip()
    assert command == f"curl {README_ORIGIN}/healthz"
    completed = run_bounded(
        ["bash", "-e", "-c", command.replace(README_ORIGIN, server.url)],
        env=node_env(HOME=str(tmp_path)),
        timeout=30,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["status"] == "ok"
