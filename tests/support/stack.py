"""The compose deployment as processes on this machine: web workers run with the command
line and environment docker-compose.yml gives them, behind nginx with the project's config."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import logcheck
from tests.support.deploy import NGINX_TEMPLATE
from tests.support.live import ROOT, stop_process


def run_compose_command(command: list[str], env: dict[str, str]) -> str:
    """Run a one-shot service's command (such as migrate) from the project directory."""
    argv = [sys.executable, *command[1:]] if command[0] == "python" else command
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    # Whether its log is held to the no-unexpected-traceback rule (our workers, not nginx).
    checked: bool = True

    def start(self) -> Process:
        if self.checked:
            logcheck.watch(self.name, self.log_path)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        return self

    def wait_until(self, url: str, *, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()}")
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer {url}:\n{self.log()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Stop this process (by its own PID, nothing else)."""
        stop_process(self.process)
        if self.checked:
            logcheck.stopped(self.log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""


def render_nginx_site(*, listen: str, front_listen: str, front_port: int, upstreams: list[str]) -> str:
    """deploy/nginx/default.conf.template with its four placeholders filled, as the nginx
    image's envsubst fills them from the compose file; nothing else changes."""
    values = {
        "NGINX_LISTEN": listen,
        "NGINX_FRONT_LISTEN": front_listen,
        "NGINX_FRONT_PORT": str(front_port),
        "MCP_UPSTREAM_SERVERS": " ".join(f"server {address};" for address in upstreams),
    }
    text = NGINX_TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    assert "${" not in text, "the template has a placeholder the test does not know"
    return text


def nginx_main_config(prefix: Path, site: Path) -> str:
    """A main nginx.conf for an unprivileged run in `prefix`; the access log records which
    worker served each request."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 512; }}
http {{
    log_format upstream '$request_method $uri $status upstream=$upstream_addr';
    access_log {prefix / "access.log"} upstream;
{temp}
    include {site};
}}
"""


def start_nginx(nginx: str, prefix: Path, site_text: str) -> Process:
    prefix.mkdir(parents=True, exist_ok=True)
    site = prefix / "default.conf"
    site.write_text(site_text)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_main_config(prefix, site))
    check = subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
    argv = [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf), "-g", "daemon off;"]
    return Process("nginx", argv, dict(os.environ), prefix / "nginx.out", checked=False).start()


def upstreams_seen(access_log: Path, method: str, path_prefix: str) -> set[str]:
    """The worker addresses that served `method path_prefix...` requests (after a failover,
    $upstream_addr lists every worker tried; the last one answered)."""
    seen = set()
    for line in access_log.read_text().splitlines():
        request, _, upstreams = line.partition(" upstream=")
        parts = request.split()
        if len(parts) == 3 and parts[0] == method and parts[1].startswith(path_prefix):
            seen.add(upstreams.split(",")[-1].strip())
    return seen
