"""The npm MCP clients that `make node` installs into node_modules (pinned in package.json)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.live import ROOT

NODE_MODULES = ROOT / "node_modules"
# node@22 from npm: the conformance suite needs Node >= 22 and the Inspector declares it.
NODE = NODE_MODULES / "node" / "bin" / "node"
BIN = NODE_MODULES / ".bin"
SUPPORT = Path(__file__).resolve().parent


def require_node_tools() -> None:
    """Skip locally, fail under CI=true, when `make node` has not installed the clients."""
    if NODE.exists() and (BIN / "conformance").exists():
        return
    message = "node_modules is missing: run `make node` (make test does)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def node_command(tool: str, *args: str, node_options: tuple[str, ...] = ()) -> list[str]:
    """Run an npm bin script with Node 22, whatever `node` is first on PATH."""
    return [str(NODE), *node_options, str(BIN / tool), *args]


def node_env(**extra: str) -> dict[str, str]:
    """The environment for the clients: no desktop (so nothing tries a real browser), no colours."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            "DISPLAY",
            "WAYLAND_DISPLAY",
            "XDG_CURRENT_DESKTOP",
            "DESKTOP_SESSION",
            "KDE_FULL_SESSION",
            "GNOME_DESKTOP_SESSION_ID",
            "BROWSER",
        }
    }
    env.update({"NO_COLOR": "1", "FORCE_COLOR": "0", "PATH": f"{NODE.parent}:{env.get('PATH', '')}"})
    env.update(extra)
    return env


def stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """Stop one process we started, and the process group it leads (by its id, never by name)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def run_bounded(
    command: list[str], *, env: dict[str, str], timeout: float, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run a client to completion in its own process group; on timeout stop the group and fail."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(process)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command[1:3]} timed out after {timeout}s\n{stdout[-3000:]}\n{stderr[-3000:]}")
    finally:
        stop_process(process)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
