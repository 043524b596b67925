"""Talk JSON-RPC to a local stdio MCP process (mcp-remote), newline-delimited, with timeouts."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.node import stop_process


class StdioClient:
    """One child process in its own process group; stderr goes to a file for failure reports."""

    def __init__(self, command: list[str], *, env: dict[str, str], cwd: Path, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("w")
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.received: list[dict[str, Any]] = []
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        self.process.stdin.flush()

    def request(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30) -> Any:
        """Send a request and wait for its answer; returns the result or fails with the error."""
        self._next_id += 1
        request_id = self._next_id
        self.send({"id": request_id, "method": method, **({"params": params} if params is not None else {})})
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"{method}: the process exited ({self.process.poll()})\n{self.stderr()}")
            message = json.loads(line)
            self.received.append(message)
            if message.get("id") == request_id:
                if "error" in message:
                    raise AssertionError(f"{method} failed: {message['error']}\n{self.stderr()}")
                return message["result"]
        raise AssertionError(f"{method}: no answer within {timeout}s\n{self.stderr()}")

    def initialize(self, *, timeout: float = 30) -> Any:
        result = self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "e2e-test", "version": "1.0"},
            },
            timeout=timeout,
        )
        self.send({"method": "notifications/initialized"})
        return result

    def close(self, timeout: float = 10) -> int | None:
        """Close stdin (the proxy then shuts down), wait a little, and stop what is left."""
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
        stop_process(self.process)
        self._stderr.close()
        return self.process.returncode
