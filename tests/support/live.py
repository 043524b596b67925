"""Live servers for tests: real daphne processes on 127.0.0.1, as users reach them.

Each server gets its own database (a SQLite file, or a fresh PostgreSQL database) that
`manage.py migrate` prepares, exactly as `make run` and the compose file do.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
ALICE = ("alice", "alice-password-123")
BOB = ("bob", "bob-password-456")
OPERATOR = ("operator", "operator-password-789")
TEST_SECRET_KEY = "test-secret-key-that-is-long-enough-for-the-checks-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(*, port: int, database_url: str, **overrides: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GITHUB_", "MCP_", "REDIS_", "DATABASE_", "REGISTRATION_"))
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "mcpsite.settings",
            "DOTENV_PATH": "/nonexistent/.env",
            "DEBUG": "false",
            "SECRET_KEY": TEST_SECRET_KEY,
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "DATABASE_URL": database_url,
            "REDIS_URL": "",
            "REGISTRATION_RATE_LIMIT": "100000",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def manage(env: dict[str, str], *args: str, input_text: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        input=input_text,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def create_user(env: dict[str, str], username: str, password: str, **fields: Any) -> None:
    create_users(env, (username, password, fields))


def create_users(env: dict[str, str], *users: tuple[str, str, dict[str, Any]]) -> None:
    """Create accounts in one `manage.py shell` (each start of Django costs a second or more)."""
    lines = ["from django.contrib.auth import get_user_model", "User = get_user_model()"]
    for username, password, fields in users:
        extra = "".join(f", {key}={value!r}" for key, value in fields.items())
        lines.append(f"User.objects.create_user({username!r}, password={password!r}{extra})")
    manage(env, "shell", "-c", "\n".join(lines))


@dataclass
class LiveServer:
    """One daphne worker. `url` is its origin; `sql()` reads its database directly."""

    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> LiveServer:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                *self.extra_args,
                "mcpsite.asgi:application",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not become healthy:\n{self.log()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        url = self.env["DATABASE_URL"]
        if url.startswith("sqlite:///"):
            with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
                return list(conn.execute(query, params).fetchall())
        import psycopg

        with psycopg.connect(url) as conn:
            return list(conn.execute(query.replace("?", "%s"), params).fetchall())


_migrated_sqlite: list[Path] = []


def _fresh_sqlite(env: dict[str, str], path: Path) -> None:
    """Migrate once per test run; later SQLite servers start from a copy of that database."""
    if not _migrated_sqlite:
        manage(env, "migrate", "--noinput")
        template = path.with_name("migrated-template.sqlite3")
        with sqlite3.connect(path) as source, sqlite3.connect(template) as copy:
            source.backup(copy)
        _migrated_sqlite.append(template)
        return
    with sqlite3.connect(_migrated_sqlite[0]) as source, sqlite3.connect(path) as copy:
        source.backup(copy)


def prepare_server(
    tmp_dir: Path, *, database_url: str | None = None, port: int | None = None, **overrides: str
) -> LiveServer:
    """Migrate a fresh database and return a (not yet started) server for it."""
    port = port or free_port()
    sqlite_path = tmp_dir / "db.sqlite3"
    env = base_env(port=port, database_url=database_url or f"sqlite:///{sqlite_path}", **overrides)
    if database_url is None:
        _fresh_sqlite(env, sqlite_path)
    else:
        manage(env, "migrate", "--noinput")
    return LiveServer(env=env, port=port, log_path=tmp_dir / f"server-{port}.log")
