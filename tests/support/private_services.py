"""Private Redis and PostgreSQL instances that a test may stop and start at will.

The shared services (tests/support/services.py) must never be stopped: other tests and other
checkouts use them. For outage tests each of these starts its own server on a free
127.0.0.1 port with its data in a temporary directory, and stops only that process.

    with PrivateRedis() as redis_server:         # start() on enter, stop() on exit
        env = {"REDIS_URL": redis_server.url}
        redis_server.stop(); ...; redis_server.start()   # an outage; restart() = both, emptied

    with PrivatePostgres() as pg:
        pg.create_database("mcp")
        env = {"DATABASE_URL": pg.url("mcp")}
        pg.stop(); ...; pg.start()               # the data survives
        pg.pause(); ...; pg.resume()             # hung (SIGSTOP), not stopped; redis_server too

The binaries: `redis-server` on PATH; `initdb` and `pg_ctl` from /usr/lib/postgresql/*/bin
(or PATH). When one is missing the test is skipped locally and fails under CI=true, like
the shared services. PostgreSQL refuses to run as root: as root the cluster is created and
run as the `postgres` system user (runuser), in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest

from tests.support.live import free_port, stop_process


def _missing(name: str) -> None:
    message = f"{name} is not installed"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI needs it", pytrace=False)
    pytest.skip(message)


def _wait_for_port(port: int, *, timeout: float, alive: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"the server exited early with {alive.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class PrivateRedis:
    """A redis-server of our own: no persistence (--save "" --appendonly no), in a temp dir.

    `url` stays the same across stop(), start() and restart(); a restart comes back empty.
    """

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _missing("redis-server")
        self.binary = str(binary)
        self.port = port or free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="private-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> PrivateRedis:
        if self.process is not None and self.process.poll() is None:
            return self
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _wait_for_port(self.port, timeout=timeout, alive=self.process)
        return self

    def stop(self) -> None:
        """Stop our redis-server (by its PID) and wait until its port is closed."""
        stop_process(self.process)
        self.process = None

    def pause(self) -> None:
        """Hang our redis-server (SIGSTOP): connections stay open, nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def restart(self) -> PrivateRedis:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _postgres_binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class PrivatePostgres:
    """A PostgreSQL cluster of our own, from initdb: trust auth, 127.0.0.1 only, a free port.

    Its socket directory is inside its temp dir, so it never meets the system's cluster.
    stop() is a fast shutdown (connections are cut, as in a real outage); the data stays
    for start().
    """

    SUPERUSER = "postgres"

    def __init__(self, port: int | None = None) -> None:
        initdb, pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            _missing("PostgreSQL (initdb, pg_ctl)")
        self.initdb, self.pg_ctl = str(initdb), str(pg_ctl)
        self.port = port or free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="private-postgres-"))
        self.data = self.directory / "data"
        self.socket_dir = self.directory / "socket"
        self.log_path = self.directory / "postgres.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: the postgres system user runs it, in its own dir.
            account = pwd.getpwnam("postgres")
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._run(
            [
                *self._as_user,
                self.initdb,
                "-D",
                str(self.data),
                "-U",
                self.SUPERUSER,
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        )
        self._run([*self._as_user, "mkdir", "-p", str(self.socket_dir)])
        self._started = False
        self._paused: list[int] = []

    @staticmethod
    def _run(command: list[str], timeout: float = 120) -> None:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def start(self, timeout: float = 30) -> PrivatePostgres:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.socket_dir} -c fsync=off"
        self._run(
            [
                *self._as_user,
                self.pg_ctl,
                "-D",
                str(self.data),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            timeout=timeout + 10,
        )
        self._started = True
        _wait_for_port(self.port, timeout=timeout)
        return self

    def stop(self) -> None:
        """Fast shutdown of our cluster (pg_ctl reads its own postmaster.pid)."""
        if not self._started:
            return
        self._run([*self._as_user, self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])
        self._started = False

    def pids(self) -> list[int]:
        """The postmaster (from its postmaster.pid) and the processes it started."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        return [postmaster, *map(int, children)]

    def pause(self) -> None:
        """Hang our cluster (SIGSTOP to each of its processes): connections stay open and new
        ones are accepted by the kernel, but nothing answers."""
        self._paused = self.pids()
        for pid in self._paused:
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._paused:
            os.kill(pid, signal.SIGCONT)
        self._paused = []

    def create_database(self, name: str) -> str:
        """Create database `name`; returns its URL."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
