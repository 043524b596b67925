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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support import logcheck
from tests.support.deploy import (
    ENV_EXAMPLE,
    dotenv_values,
    load_compose,
    service_command,
    service_environment,
    worker_argv,
)

ROOT = Path(__file__).resolve().parents[2]
ALICE = ("alice", "alice-password-123")
BOB = ("bob", "bob-password-456")
OPERATOR = ("operator", "operator-password-789")
TEST_SECRET_KEY = "test-secret-key-that-is-long-enough-for-the-checks-0123456789"


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a process this test run started (by its own PID): terminate, then kill if it hangs."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


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
            # Every registration a new client, as tests assume (test_registration_reuse turns it on).
            "REGISTRATION_REUSE_WINDOW": "0",
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


def create_users(env: dict[str, str], *users: tuple[str, str, dict[str, Any]]) -> None:
    """Create (username, password, fields) users in one manage.py run."""
    code = "from django.contrib.auth import get_user_model; User = get_user_model()\n"
    for username, password, fields in users:
        extra = "".join(f", {key}={value!r}" for key, value in fields.items())
        code += f"User.objects.create_user({username!r}, password={password!r}{extra})\n"
    manage(env, "shell", "-c", code)


def create_user(env: dict[str, str], username: str, password: str, **fields: Any) -> None:
    create_users(env, (username, password, fields))


@dataclass
class LiveServer:
    """One daphne worker. `url` is its origin; `sql()` reads its database directly."""

    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    # Log patterns (regexes) this server may show: see tests/support/logcheck.py.
    allowed_log: tuple[str, ...] = ()
    # The whole command line (compose's web command); by default `manage.py serve` on `port`.
    argv: list[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30, *, ready_statuses: tuple[int, ...] = (200,)) -> LiveServer:
        """Start daphne and wait until /healthz answers with one of `ready_statuses`."""
        logcheck.watch(f"server :{self.port}", self.log_path, allowed=self.allowed_log)
        log = self.log_path.open("ab")
        argv = self.argv or [
            sys.executable,
            "manage.py",
            "serve",  # daphne with the MCP worker's start and SIGTERM drain, as compose runs it
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        self.process = subprocess.Popen(
            [*argv, *self.extra_args],
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
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code in ready_statuses:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not become healthy:\n{self.log()}")

    def stop(self) -> None:
        stop_process(self.process)
        logcheck.stopped(self.log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        url = self.env["DATABASE_URL"]
        if url.startswith("sqlite:///"):
            with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
                return list(conn.execute(query, params).fetchall())
        import psycopg

        with psycopg.connect(url) as conn:
            cursor = conn.execute(query.replace("?", "%s"), params)
            return list(cursor.fetchall()) if cursor.description else []  # an UPDATE returns no rows


_sqlite_template: Path | None = None


def migrated_sqlite(target: Path) -> None:
    """A freshly migrated SQLite database at `target`.

    `manage.py migrate` runs once per test session into a template that each server then
    gets a copy of (through SQLite's backup API, so nothing in the WAL is lost).
    """
    global _sqlite_template
    if _sqlite_template is None:
        template = Path(tempfile.mkdtemp(prefix="mcp-template-")) / "template.sqlite3"
        manage(base_env(port=1, database_url=f"sqlite:///{template}"), "migrate", "--noinput")
        _sqlite_template = template
    with sqlite3.connect(_sqlite_template) as source, sqlite3.connect(target) as copy:
        source.backup(copy)


def prepare_server(
    tmp_dir: Path, *, database_url: str | None = None, port: int | None = None, **overrides: str
) -> LiveServer:
    """A (not yet started) server on a freshly migrated database of its own."""
    port = port or free_port()
    if database_url is None:
        path = tmp_dir / f"db-{port}.sqlite3"
        migrated_sqlite(path)
        database_url = f"sqlite:///{path}"
        env = base_env(port=port, database_url=database_url, **overrides)
    else:
        env = base_env(port=port, database_url=database_url, **overrides)
        manage(env, "migrate", "--noinput")
    return LiveServer(env=env, port=port, log_path=tmp_dir / f"server-{port}.log")


# Test needs, not deployment choices: every test registers clients of its own from one address.
TEST_REGISTRATION = {"REGISTRATION_RATE_LIMIT": "100000", "REGISTRATION_REUSE_WINDOW": "0"}
# What a test run shares with the processes it starts: where programs and home are.
HOST_BASICS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
_static_root: Path | None = None


def collected_static() -> Path:
    """The hashed static files the image's build collects (COLLECTED_STATIC=true), collected
    once per test session."""
    global _static_root
    if _static_root is None:
        root = Path(tempfile.mkdtemp(prefix="mcp-static-"))
        env = base_env(
            port=1, database_url="sqlite:///:memory:", STATIC_ROOT=str(root), COLLECTED_STATIC="true"
        )
        manage(env, "collectstatic", "--noinput")
        _static_root = root
    return _static_root


def compose_environment(service: str, *, public_url: str, **overrides: str) -> dict[str, str]:
    """The environment docker compose gives a container of `service`: the image's ENV, the
    .env a user makes from .env.example (with the values the README asks them to set), and
    the service's `environment`; then `overrides`. Nothing of this shell's settings leaks in."""
    dotenv = {
        **dotenv_values(ENV_EXAMPLE),
        "SECRET_KEY": TEST_SECRET_KEY,
        "POSTGRES_PASSWORD": "unused-here",
        "PUBLIC_URL": public_url,
    }
    env = {key: value for key, value in os.environ.items() if key in HOST_BASICS}
    env.update(service_environment(load_compose(), service, dotenv))
    env.update(overrides)
    return env


def deployed_server(
    tmp_dir: Path,
    *,
    database_url: str,
    redis_url: str,
    port: int | None = None,
    **overrides: str,
) -> LiveServer:
    """A (not yet started) web worker as docker-compose.yml runs it: the web service's command
    line and environment, with only what cannot be the same here replaced (the stores'
    addresses, the port and PUBLIC_URL, where the collected static files are, the log level,
    the registration limits every test lifts) and whatever the test sets in `overrides`. The
    database is migrated first with the migrate service's command."""
    port = port or free_port()
    compose = load_compose()
    stores = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STATIC_ROOT": str(collected_static()),
        "DOTENV_PATH": "/nonexistent/.env",
        "LOG_LEVEL": "WARNING",
    }
    public_url = f"http://127.0.0.1:{port}"
    command = service_command(compose, "migrate")
    assert command[:2] == ["python", "manage.py"], command
    manage(compose_environment("migrate", public_url=public_url, **stores), *command[2:])
    env = compose_environment("web", public_url=public_url, **{**stores, **TEST_REGISTRATION, **overrides})
    return LiveServer(
        env=env,
        port=port,
        log_path=tmp_dir / f"server-{port}.log",
        argv=worker_argv(service_command(compose, "web"), port=port),
    )


def worker_pair(
    tmp_dir: Path,
    *,
    database_url: str,
    redis_url: str,
    users: tuple[tuple[str, str, dict[str, Any]], ...] = (),
    **overrides: str,
) -> tuple[LiveServer, LiveServer]:
    """Two started workers on one database and one Redis, as compose runs replicas of its web
    service (its command line and environment: see `deployed_server`); clients are given the
    first one's origin (PUBLIC_URL) and may use either."""
    port_a, port_b = free_port(), free_port()
    first = deployed_server(tmp_dir, database_url=database_url, redis_url=redis_url, port=port_a, **overrides)
    if users:
        create_users(first.env, *users)
    second = LiveServer(
        env={**first.env},
        port=port_b,
        log_path=tmp_dir / f"server-{port_b}.log",
        argv=worker_argv(service_command(load_compose(), "web"), port=port_b),
    )
    first.start()
    try:
        second.start()
    except BaseException:
        first.stop()
        raise
    return first, second
