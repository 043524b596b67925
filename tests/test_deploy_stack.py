"""The docker compose deployment, run as processes because no Docker engine is available.

What docker-compose.yml runs, taken from it: the migrate command, two web workers with the
web service's command line and environment (image ENV + .env + `environment`), on this
machine's PostgreSQL and Redis, behind Debian's nginx with deploy/nginx/default.conf.template.
Everything is reached through the proxy, as clients reach it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import psycopg
import pytest

from tests.support.debian import require_debian_program
from tests.support.deploy import (
    ENV_EXAMPLE,
    dotenv_values,
    load_compose,
    service_command,
    service_environment,
    worker_argv,
)
from tests.support.live import create_user, free_port
from tests.support.oauth import Browser, OAuthClient, obtain_token
from tests.support.services import fresh_postgres_database, fresh_redis_database
from tests.support.stack import (
    Process,
    render_nginx_site,
    run_compose_command,
    start_nginx,
    upstreams_seen,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.e2e]

USER = ("dora", "dora-password-321")
PROTOCOL_VERSION = "2025-06-18"
METRICS_TOKEN = "deploy-metrics-token-0123456789"


@dataclass
class Stack:
    url: str  # the proxy's public listener: PUBLIC_URL
    front_url: str  # the listener a TLS terminator would use
    workers: list[Process]
    nginx: Process
    access_log: Path
    database_url: str

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url) as conn:
            return list(conn.execute(query, params).fetchall())

    @property
    def worker_addresses(self) -> set[str]:
        return {f"127.0.0.1:{worker.argv[worker.argv.index('-p') + 1]}" for worker in self.workers}


def app_environment(service: str, dotenv: dict[str, str], **overrides: str) -> dict[str, str]:
    """The process environment for a compose service: this machine's basics (PATH, HOME)
    without any of our settings, then what compose would give the container."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV"}
    }
    env.update(service_environment(load_compose(), service, dotenv))
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    nginx_binary = require_debian_program("nginx", package="nginx")
    tmp = tmp_path_factory.mktemp("stack")
    compose = load_compose()
    proxy_port, front_port = free_port(), free_port()
    public_url = f"http://127.0.0.1:{proxy_port}"
    # `cp .env.example .env` and the edits the README asks for.
    dotenv = {
        **dotenv_values(ENV_EXAMPLE),
        "SECRET_KEY": "deploy-test-secret-key-long-enough-for-production-0123456789",
        "POSTGRES_PASSWORD": "unused-here",
        "PUBLIC_URL": public_url,
        "METRICS_TOKEN": METRICS_TOKEN,
        # What a log pipeline reads: one JSON object per line, access lines included.
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    with fresh_postgres_database() as database_url, fresh_redis_database() as redis_url:
        # Only what cannot be the same here: the stores' addresses (compose names them db
        # and redis) and where the image's build-time collectstatic writes.
        overrides = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "STATIC_ROOT": str(tmp / "static"),
            "DOTENV_PATH": "/nonexistent/.env",
        }
        web_env = app_environment("web", dotenv, **overrides)
        run_compose_command([sys.executable, "manage.py", "collectstatic", "--noinput"], web_env)
        run_compose_command(
            service_command(compose, "migrate"), app_environment("migrate", dotenv, **overrides)
        )
        create_user(web_env, *USER)

        workers = []
        for index in range(2):
            port = free_port()
            argv = worker_argv(service_command(compose, "web"), port=port)
            workers.append(Process(f"web-{index}", argv, web_env, tmp / f"web-{index}.log").start())
        nginx = None
        try:
            for worker in workers:
                worker.wait_until(f"http://127.0.0.1:{worker.argv[worker.argv.index('-p') + 1]}/healthz")
            site = render_nginx_site(
                listen=f"127.0.0.1:{proxy_port}",
                front_listen=f"127.0.0.1:{front_port}",
                front_port=front_port,
                upstreams=[f"127.0.0.1:{w.argv[w.argv.index('-p') + 1]}" for w in workers],
            )
            nginx = start_nginx(nginx_binary, tmp / "nginx", site)
            nginx.wait_until(f"{public_url}/healthz", timeout=20)
            yield Stack(
                url=public_url,
                front_url=f"http://127.0.0.1:{front_port}",
                workers=workers,
                nginx=nginx,
                access_log=tmp / "nginx" / "access.log",
                database_url=database_url,
            )
        finally:
            if nginx:
                nginx.stop()
            for worker in workers:
                worker.stop()


def test_healthz_through_the_proxy_checks_postgres_and_redis(stack: Stack) -> None:
    response = httpx.get(f"{stack.url}/healthz", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {
        "database": "ok",
        "redis": "ok",
        "bus": "ok",
        "cache": "ok",
        "worker": "ok",
    }


def test_the_metadata_advertises_public_url(stack: Stack) -> None:
    meta = httpx.get(f"{stack.url}/.well-known/oauth-authorization-server", timeout=10).json()
    assert meta["issuer"] == stack.url
    assert meta["token_endpoint"] == f"{stack.url}/token"
    resource = httpx.get(f"{stack.url}/.well-known/oauth-protected-resource/mcp", timeout=10).json()
    assert resource["resource"] == f"{stack.url}/mcp"
    assert resource["authorization_servers"] == [stack.url]


def test_the_whole_oauth_flow_through_the_proxy_uses_both_workers(stack: Stack) -> None:
    browser = Browser(stack.url)
    try:
        assert browser.login(*USER).status_code == 302
        token = obtain_token(stack.url, browser, resource=f"{stack.url}/mcp")
    finally:
        browser.close()
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "mcp"
    client: OAuthClient = token["client"]
    refreshed = client.refresh(token["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    rows = stack.sql(
        "SELECT count(*) FROM oauth2_provider_accesstoken t JOIN oauthapp_application a "
        "ON a.id = t.application_id WHERE a.client_id = %s",
        (client.client_id,),
    )
    assert rows == [(1,)]  # the refresh replaced the first token
    # Round robin: the login, consent and token requests were spread over both workers.
    assert upstreams_seen(stack.access_log, "POST", "/") == stack.worker_addresses


def test_static_files_are_collected_and_served(stack: Stack) -> None:
    page = httpx.get(f"{stack.url}/admin/login/", timeout=10)
    assert page.status_code == 200
    hashed = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', page.text)
    assert hashed, "admin pages link the hashed, collected file"
    css = httpx.get(f"{stack.url}{hashed.group(1)}", timeout=10)
    assert css.status_code == 200
    assert "immutable" in css.headers["cache-control"]


def test_the_public_listener_ignores_forged_forwarded_headers(stack: Stack) -> None:
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    response = httpx.post(f"{stack.url}/register", json=client_body(), headers=forged, timeout=10)
    assert response.status_code == 201, response.text
    assert registered_from(stack, response.json()["client_id"]) == "127.0.0.1"
    # A believed https would have made Django mark the CSRF cookie Secure.
    page = httpx.get(f"{stack.url}/login", headers=forged, timeout=10)
    assert "csrftoken=" in page.headers["set-cookie"]
    assert "secure" not in page.headers["set-cookie"].lower()


def test_the_front_listener_keeps_the_tls_terminators_headers(stack: Stack) -> None:
    headers = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    response = httpx.post(f"{stack.front_url}/register", json=client_body(), headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    assert registered_from(stack, response.json()["client_id"]) == "198.51.100.7"


def worker_records(stack: Stack) -> list[dict[str, Any]]:
    """Every JSON log record the web workers wrote."""
    lines = [line for w in stack.workers for line in w.log_path.read_text().splitlines()]
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_the_proxy_gives_each_request_an_id_that_reaches_the_worker_log_and_the_answer(
    stack: Stack,
) -> None:
    # The public listener: nginx's own id, whatever the client sent.
    response = httpx.get(f"{stack.url}/healthz", headers={"X-Request-ID": "chosen-by-a-client"}, timeout=10)
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id  # nginx's $request_id
    # The front listener: the id the TLS terminator sent is kept.
    front = httpx.get(
        f"{stack.front_url}/.well-known/oauth-authorization-server",
        headers={"X-Request-ID": "edge-7f3a"},
        timeout=10,
    )
    assert front.headers["x-request-id"] == "edge-7f3a"
    for wanted, path in ((request_id, "/healthz"), ("edge-7f3a", "/.well-known/oauth-authorization-server")):
        access = [r for r in worker_records(stack) if r.get("request_id") == wanted]
        assert [(r["logger"], r["path"]) for r in access] == [("mcpapp.access", path)], access


def test_metrics_refuse_an_outside_caller_and_accept_the_token(stack: Stack) -> None:
    # Through the front listener the TLS terminator names the caller: someone on the internet.
    outside = {"X-Forwarded-For": "203.0.113.9"}
    assert httpx.get(f"{stack.front_url}/metrics", headers=outside, timeout=10).status_code == 403
    with_token = {**outside, "Authorization": f"Bearer {METRICS_TOKEN}"}
    scraped = httpx.get(f"{stack.front_url}/metrics", headers=with_token, timeout=10)
    assert scraped.status_code == 200
    assert "mcp_http_requests_total" in scraped.text
    # The public listener ignores a forged header and names the caller nginx saw: this test's
    # own loopback address, which the default allowlist admits.
    local = httpx.get(f"{stack.url}/metrics", headers=outside, timeout=10)
    assert local.status_code == 200


def registered_from(stack: Stack, client_id: str) -> str:
    rows = stack.sql(
        "SELECT host(registered_from) FROM oauthapp_application WHERE client_id = %s", (client_id,)
    )
    return rows[0][0]


def client_body() -> dict[str, Any]:
    return {
        "client_name": "Forwarded test",
        "redirect_uris": ["http://localhost:33418/oauth/callback"],
        "token_endpoint_auth_method": "none",
    }


# --- MCP through the proxy ------------------------------------------------------------------


def fresh_token(stack: Stack) -> str:
    browser = Browser(stack.url)
    try:
        assert browser.login(*USER).status_code == 302
        return obtain_token(stack.url, browser)["access_token"]
    finally:
        browser.close()


def rpc(method: str, params: dict[str, Any] | None = None, id_: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if id_ is not None:
        message["id"] = id_
    return message


INITIALIZE_PARAMS = {
    "protocolVersion": PROTOCOL_VERSION,
    "capabilities": {},
    "clientInfo": {"name": "deploy-test", "version": "1.0"},
}


def answer_of(response: httpx.Response, id_: int) -> dict[str, Any]:
    """The JSON-RPC answer with `id_`, from a JSON body or an event stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:"):
                message = json.loads(line[5:].strip())
                if message.get("id") == id_:
                    return message
        raise AssertionError(f"no answer {id_} in {response.text!r}")
    message = response.json()
    assert message.get("id") == id_, message
    return message


def streamable_http_session(stack: Stack, token: str, *, calls: int) -> None:
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    with httpx.Client(base_url=stack.url, headers=headers, timeout=20) as http:
        init = http.post("/mcp", json=rpc("initialize", INITIALIZE_PARAMS, 1))
        assert init.status_code == 200, init.text
        assert "serverInfo" in answer_of(init, 1)["result"]
        session = {"Mcp-Session-Id": init.headers["mcp-session-id"], "MCP-Protocol-Version": PROTOCOL_VERSION}
        assert http.post("/mcp", json=rpc("notifications/initialized"), headers=session).status_code == 202
        for n in range(calls):
            call = http.post(
                "/mcp",
                json=rpc("tools/call", {"name": "add", "arguments": {"a": 23, "b": 19}}, 10 + n),
                headers=session,
            )
            assert call.status_code == 200, call.text
            result = answer_of(call, 10 + n)["result"]
            assert result.get("isError") is not True, result
            assert "42" in json.dumps(result)


def sse_session(stack: Stack, token: str, *, calls: int) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    with (
        httpx.Client(timeout=httpx.Timeout(20, read=15)) as http,
        http.stream("GET", f"{stack.url}/sse", headers={**auth, "Accept": "text/event-stream"}) as stream,
    ):
        assert stream.status_code == 200
        events = sse_events(stream.iter_lines())
        kind, data = next(events)
        assert kind == "endpoint", (kind, data)
        endpoint = urljoin(stack.url + "/", data)
        assert endpoint.startswith(f"{stack.url}/sse/message?sessionId=")
        posted = http.post(endpoint, json=rpc("initialize", INITIALIZE_PARAMS, 1), headers=auth)
        assert posted.status_code == 202, posted.text
        assert "serverInfo" in next_answer(events, 1)["result"]
        assert http.post(endpoint, json=rpc("notifications/initialized"), headers=auth).status_code == 202
        for n in range(calls):
            call = rpc("tools/call", {"name": "add", "arguments": {"a": 23, "b": 19}}, 10 + n)
            assert http.post(endpoint, json=call, headers=auth).status_code == 202
            assert "42" in json.dumps(next_answer(events, 10 + n)["result"])


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    kind, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def next_answer(events: Iterator[tuple[str, str]], id_: int) -> dict[str, Any]:
    for kind, data in events:
        if kind == "message":
            message = json.loads(data)
            if message.get("id") == id_:
                return message
    raise AssertionError(f"the stream ended before answer {id_}")


def test_streamable_http_sessions_span_both_workers(stack: Stack) -> None:
    streamable_http_session(stack, fresh_token(stack), calls=6)
    assert upstreams_seen(stack.access_log, "POST", "/mcp") == stack.worker_addresses


def test_sse_sessions_span_both_workers(stack: Stack) -> None:
    sse_session(stack, fresh_token(stack), calls=6)
    assert upstreams_seen(stack.access_log, "POST", "/sse/message") == stack.worker_addresses


# --- One worker gone --------------------------------------------------------------------------


@pytest.fixture
def one_worker_stopped(stack: Stack) -> Stack:
    stack.workers[0].stop()
    assert not stack.workers[0].running
    return stack


def test_with_one_worker_stopped_new_logins_and_tokens_still_work(one_worker_stopped: Stack) -> None:
    stack = one_worker_stopped
    for _ in range(4):
        assert httpx.get(f"{stack.url}/healthz", timeout=10).status_code == 200
    browser = Browser(stack.url)
    try:
        assert browser.login(*USER).status_code == 302
        token = obtain_token(stack.url, browser)
    finally:
        browser.close()
    assert token["token_type"] == "Bearer"


def test_with_one_worker_stopped_new_mcp_sessions_still_work(one_worker_stopped: Stack) -> None:
    token = fresh_token(one_worker_stopped)
    streamable_http_session(one_worker_stopped, token, calls=3)
    sse_session(one_worker_stopped, token, calls=3)
