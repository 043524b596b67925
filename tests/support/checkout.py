"""A newcomer's checkout: a copy of this one in a temporary folder, driven with `make` as the
README says, reusing this run's virtualenv (through the Makefile's VENV) so nothing is installed.

The copy holds the files git would hand a new clone (tracked and untracked-but-not-ignored,
so uncommitted work is tested too), never .venv, node_modules, db.sqlite3, .env or
.local-login. Every `make` runs in a process group of its own and is stopped as a group.
Its output (the server's log among it) is held to the log check (tests/support/logcheck.py)
like any live server's.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import logcheck
from tests.support.live import ROOT

VENV = Path(sys.prefix)


def copy_checkout(target: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():  # a deleted but still tracked file is not in the working tree
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())
    return target


def newcomer_env(home: Path, **extra: str) -> dict[str, str]:
    """A shell with none of this server's settings in it (nor the test run's)."""
    env = {key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL", "TMPDIR") if key in os.environ}
    env.update({"HOME": str(home), "PYTHONUNBUFFERED": "1", **extra})
    return env


@dataclass
class OnLine:
    """What `action` returned when stdout first printed a line holding `text` (run by the
    thread reading the output, before the next line is read)."""

    text: str
    action: Callable[[], Any]
    result: Any = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Make:
    """One `make <target> VAR=value ...` in a checkout, its output in files beside it."""

    checkout: Path
    args: list[str]
    env: dict[str, str]
    name: str = "make"
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _on_lines: list[OnLine] = field(default_factory=list, init=False)
    _reader: threading.Thread | None = field(default=None, init=False)

    def on_line(self, text: str, action: Callable[[], Any]) -> OnLine:
        """Run `action` the instant stdout prints a line holding `text` (call before start)."""
        hook = OnLine(text, action)
        self._on_lines.append(hook)
        return hook

    @property
    def out_path(self) -> Path:
        return self.checkout.parent / f"{self.name}.out"

    @property
    def err_path(self) -> Path:
        return self.checkout.parent / f"{self.name}.err"

    def start(self) -> Make:
        # -o: never remake the shared virtualenv's install stamp from this copy's pyproject.toml.
        command = ["make", "--no-print-directory", *self.args, f"VENV={VENV}", "-o", str(VENV / ".installed")]
        self.out_path.write_bytes(b"")
        with self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                command,
                cwd=self.checkout,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read_stdout, args=(self.process,), daemon=True)
        self._reader.start()
        for path in (self.out_path, self.err_path):
            logcheck.watch(f"{self.name} ({path.suffix[1:]})", path)
        return self

    def _read_stdout(self, process: subprocess.Popen[bytes]) -> None:
        """Copy stdout to its file line by line, running each `on_line` action on its line."""
        assert process.stdout is not None
        with process.stdout, self.out_path.open("ab") as out:
            for line in process.stdout:
                for hook in self._on_lines:
                    if not hook.done.is_set() and hook.text.encode() in line:
                        hook.result = hook.action()
                        hook.done.set()
                out.write(line)
                out.flush()

    def out(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def err(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def wait_for(self, text: str, *, count: int = 1, timeout: float = 90) -> str:
        """Wait until stdout holds `text` `count` times; returns stdout. Fails on exit or timeout."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.out()
            if out.count(text) >= count:
                return out
            if self.process.poll() is not None:
                raise AssertionError(f"make exited ({self.process.returncode}):\n{out}\n{self.err()}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} x{count} within {timeout}s:\n{self.out()}\n{self.err()}")

    def wait(self, timeout: float = 90) -> int:
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"make did not finish within {timeout}s:\n{self.out()}\n{self.err()}"
            ) from None
        self._check_logs()
        return code

    def stop(self) -> None:
        """SIGTERM to the group we started (make, the reloader, the server), then SIGKILL leftovers."""
        if self.process is None:
            return
        group = self.process.pid
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.process.poll()
                if not group_alive(group):
                    break
                time.sleep(0.1)
            else:
                continue
            break
        self.process.poll()
        self._check_logs()

    def _check_logs(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=10)  # the output is complete once every writer is gone
        for path in (self.out_path, self.err_path):
            logcheck.stopped(path)


def group_alive(group: int) -> bool:
    """Whether any process of the group still runs (zombies waiting for a reaper do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
