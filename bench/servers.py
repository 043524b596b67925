"""The four servers a run measures, each started pinned to one CPU and stopped by its PID.

- ours-prod: docker-compose.yml's `web` service as a process: its command line and its
  environment (image ENV + .env.example + `environment`, read from the files the way the
  deployment test reads them), on a fresh PostgreSQL database and a Redis database of our
  own, migrated with the `migrate` service's command, DEBUG off, one daphne worker.
- ours-local: what `make run` starts (SQLite, local-memory cache, one process),
  with DEBUG off so that only the stores differ from production.
- sdk-daphne / sdk-uvicorn: the `mcp` SDK's own app (bench/sdk_app.py), no auth.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.deploy import (
    ENV_EXAMPLE,
    dotenv_values,
    load_compose,
    service_command,
    service_environment,
    worker_argv,
)
from tests.support.live import ROOT, base_env, create_user, free_port, manage, stop_process
from tests.support.oauth import Browser, obtain_token
from tests.support.stack import run_compose_command

from .stores import BenchError, postgres_database, redis_database

USER = ("bench", "bench-password-0123456789")
SECRET_KEY = "bench-secret-key-long-enough-for-the-production-checks-0123456789"
SERVERS = ("ours-prod", "ours-local", "sdk-daphne", "sdk-uvicorn")
DESCRIPTIONS = {
    "ours-prod": "this server, production mode: compose's web service (daphne, 1 worker), PostgreSQL + Redis",
    "ours-local": "this server, local mode: SQLite, local-memory cache, one process, DEBUG off",
    "sdk-daphne": "the mcp SDK's app under daphne, no auth (session manager started by the first request)",
    "sdk-uvicorn": "the mcp SDK's app under uvicorn (--http h11 --loop asyncio), no auth",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PEER_GRACE_SECONDS = 3


@dataclass
class Server:
    """A started server: its process, where it listens, and the token to use (ours only)."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    token: str | None = None
    redis_url: str | None = None
    database_url: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BenchError(f"{self.name}: no VmRSS for PID {self.pid}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period (our own server: as long as the test
        harness allows a worker to drain; the peers: a few seconds, see bench/README.md)."""
        if self.name.startswith("ours-"):
            stop_process(self.process)
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=PEER_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def launch(name: str, argv: list[str], env: dict[str, str], logs: Path, cpu: int | None, port: int) -> Server:
    log_path = logs / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(pinned(argv, cpu), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Server(name=name, port=port, process=process, log_path=log_path)


def wait_ready(server: Server, path: str, ok: set[int], timeout: float = 60) -> None:
    """Until `path` answers one of `ok`; a server that exits or never answers is an error
    that carries its log tail."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not server.alive():
            raise BenchError(
                f"{server.name} exited with status {server.process.returncode} while starting; "
                f"the end of {server.log_path}:\n{server.log_tail()}"
            )
        try:
            response = httpx.get(f"{server.url}{path}", timeout=5)
            if response.status_code in ok:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise BenchError(
        f"{server.name} did not answer GET {path} within {timeout:.0f} s (last: {last}); "
        f"the end of {server.log_path}:\n{server.log_tail()}"
    )


def oauth_token(server: Server) -> str:
    """A token through the whole flow: register, login form, consent, PKCE, token; bound to
    the origin so that it serves /sse and /mcp alike."""
    browser = Browser(server.url)
    try:
        login = browser.login(*USER)
        if login.status_code != 302:
            raise BenchError(f"{server.name}: logging in answered {login.status_code}: {login.text[:300]}")
        return str(obtain_token(server.url, browser, resource=server.url)["access_token"])
    except AssertionError as exc:
        raise BenchError(f"{server.name}: the OAuth flow failed: {exc}") from exc
    finally:
        browser.close()


def compose_environment(service: str, dotenv: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """What a container of the compose service sees (as tests/test_deploy_stack.py builds it):
    this machine's basics, then image ENV + env_file + `environment`, then `overrides`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV"}
    }
    env.update(service_environment(load_compose(), service, dotenv))
    env.update(overrides)
    return env


def start_ours_prod(stack: ExitStack, work: Path, logs: Path, cpu: int | None) -> Server:
    database_url = stack.enter_context(postgres_database())
    redis_url = stack.enter_context(redis_database())
    port = free_port()
    compose = load_compose()
    # `cp .env.example .env` and the edits the README's Deploy section asks for.
    dotenv = {
        **dotenv_values(ENV_EXAMPLE),
        "SECRET_KEY": SECRET_KEY,
        "POSTGRES_PASSWORD": "unused-here",
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    # Only what cannot be the same outside containers: the stores' addresses (compose names
    # them db and redis) and where the image's build-time collectstatic writes.
    overrides = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STATIC_ROOT": str(work / "static"),
        "DOTENV_PATH": "/nonexistent/.env",
    }
    web_env = compose_environment("web", dotenv, overrides)
    run_compose_command([sys.executable, "manage.py", "collectstatic", "--noinput"], web_env)
    run_compose_command(
        service_command(compose, "migrate"), compose_environment("migrate", dotenv, overrides)
    )
    create_user(web_env, *USER)
    argv = worker_argv(service_command(compose, "web"), port=port)
    server = launch("ours-prod", argv, web_env, logs, cpu, port)
    stack.callback(server.stop)
    server.redis_url, server.database_url = redis_url, database_url
    wait_ready(server, "/healthz", {200})
    server.token = oauth_token(server)
    server.facts = {"argv": argv, "environment": sorted(k for k in web_env if k not in {"PATH", "HOME"})}
    return server


def start_ours_local(stack: ExitStack, work: Path, logs: Path, cpu: int | None) -> Server:
    port = free_port()
    database_url = f"sqlite:///{work / 'local.sqlite3'}"
    env = base_env(port=port, database_url=database_url, SECRET_KEY=SECRET_KEY)
    # The server's own defaults, as `make run` has them (the test harness quietens these).
    for name in ("LOG_LEVEL", "REGISTRATION_RATE_LIMIT"):
        env.pop(name, None)
    manage(env, "migrate", "--noinput")
    create_user(env, *USER)
    # As `make run` serves (without --reload, which only adds a watcher process).
    argv = [sys.executable, "manage.py", "serve", "-b", "127.0.0.1", "-p", str(port)]
    server = launch("ours-local", argv, env, logs, cpu, port)
    stack.callback(server.stop)
    server.database_url = database_url
    wait_ready(server, "/healthz", {200})
    server.token = oauth_token(server)
    server.facts = {"argv": argv}
    return server


def sdk_environment() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV"}
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_sdk(name: str, stack: ExitStack, logs: Path, cpu: int | None) -> Server:
    port = free_port()
    if name == "sdk-daphne":
        argv = [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "bench.sdk_app:daphne_app",
        ]
    else:
        argv = [
            sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
            "--http", "h11", "--loop", "asyncio", "bench.sdk_app:uvicorn_app",
        ]  # fmt: skip
    server = launch(name, argv, sdk_environment(), logs, cpu, port)
    stack.callback(server.stop)
    # GET /mcp without a session is refused at once; any answer means the app is up.
    wait_ready(server, "/mcp", set(range(200, 500)))
    server.facts = {"argv": argv}
    return server


@contextmanager
def running(name: str, logs: Path, cpu: int | None) -> Iterator[Server]:
    """Start `name`, yield it, and stop it, its database and its Redis database, whatever happens."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        with ExitStack() as stack:
            if name == "ours-prod":
                yield start_ours_prod(stack, work, logs, cpu)
            elif name == "ours-local":
                yield start_ours_local(stack, work, logs, cpu)
            elif name in {"sdk-daphne", "sdk-uvicorn"}:
                yield start_sdk(name, stack, logs, cpu)
            else:
                raise BenchError(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
