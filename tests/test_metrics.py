"""/metrics for operators (Prometheus text format) and the JSON log format with request ids."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.live import ROOT, LiveServer, create_users, prepare_server, worker_pair
from tests.support.mcp_http import MCPHttp, SSEStream
from tests.support.oauth import Browser, obtain_token
from tests.support.services import fresh_postgres_database, fresh_redis_database

METRICS_TOKEN = "metrics-token-0123456789abcdef"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of `name` with exactly these labels (0 if absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose /metrics admits no address: only operators and the token."""
    server = prepare_server(
        tmp_path_factory.mktemp("metrics"), METRICS_ALLOWED_IPS="192.0.2.0/24", METRICS_TOKEN=METRICS_TOKEN
    )
    create_users(
        server.env, ("mia", "mia-password-123", {}), ("root", "root-password-123", {"is_staff": True})
    )
    server.start()
    yield server
    server.stop()


def metrics(server: LiveServer) -> str:
    response = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_it_refuses_an_anonymous_caller_and_a_wrong_token(guarded: LiveServer) -> None:
    assert httpx.get(f"{guarded.url}/metrics", timeout=10).status_code == 403
    wrong = httpx.get(f"{guarded.url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 403
    user = Browser(guarded.url)
    assert user.login("mia", "mia-password-123").status_code == 302
    assert user.http.get("/metrics").status_code == 403  # logged in is not enough: staff only
    operator = Browser(guarded.url)
    assert operator.login("root", "root-password-123").status_code == 302
    assert operator.http.get("/metrics").status_code == 200


def test_behind_a_proxy_it_judges_the_address_the_proxy_gives(tmp_path: Path) -> None:
    """With nginx in front on the same host every request comes from 127.0.0.1: the allowlist
    must look at the caller the proxy names, or the whole internet reads /metrics."""
    server = prepare_server(tmp_path, BEHIND_PROXY="true", METRICS_TOKEN=METRICS_TOKEN)
    server.start()
    try:

        def status(**headers: str) -> int:
            return httpx.get(f"{server.url}/metrics", headers=headers, timeout=10).status_code

        assert status(**{"X-Forwarded-For": "203.0.113.9"}) == 403
        # nginx appends the address it saw: the last entry counts, not what the caller wrote.
        assert status(**{"X-Forwarded-For": "127.0.0.1, 203.0.113.9"}) == 403
        assert status(**{"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {METRICS_TOKEN}"}) == 200
        assert status(**{"X-Forwarded-For": "127.0.0.1"}) == 200  # a caller on this machine
        assert status() == 200  # no proxy in between: a scraper on this machine
    finally:
        server.stop()


def exposed_names(text: str) -> set[str]:
    """Every series name a scrape of `text` offers (histograms' _bucket/_count/_sum too)."""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}
    for kind_line in re.findall(r"(?m)^# TYPE (\S+) (\S+)$", text):
        name, kind = kind_line
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def test_the_readmes_prometheus_examples_parse_and_name_real_metrics(guarded: LiveServer) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Metrics and logs") :]
    section = section[: section.index("\n#", 1)]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "the scrape config and the alert rules"
    scrape, alerts = (yaml.safe_load(block) for block in blocks)
    assert scrape["scrape_configs"][0]["authorization"]["credentials"]
    rules = [rule for group in alerts["groups"] for rule in group["rules"]]
    assert rules and all(set(rule) >= {"alert", "expr", "annotations"} for rule in rules)
    named = {name for rule in rules for name in re.findall(r"\bmcp_\w+", rule["expr"])}
    assert "mcp_oauth_events_total" in named  # the search finds them
    offered = exposed_names(metrics(guarded))
    assert sorted(named - offered) == []
    # The table above the examples names real metrics too.
    tabled = set(re.findall(r"`(mcp_\w+)", section))
    assert sorted(tabled - offered) == []


def wait_for_sample(server: LiveServer, name: str, value: float, **labels: str) -> str:
    """The metrics once `name{labels}` reads `value` (a session's end is noticed shortly after)."""
    deadline = time.monotonic() + 10
    while True:
        text = metrics(server)
        if sample(text, name, **labels) == value or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_it_counts_a_known_sequence_of_requests(guarded: LiveServer) -> None:
    browser = Browser(guarded.url)
    assert browser.login("mia", "mia-password-123").status_code == 302
    before = metrics(guarded)

    # One registration, one consent, one token exchange; the token (bound to the server's
    # origin) works on both transports.
    token = obtain_token(guarded.url, browser, resource=guarded.url)["access_token"]
    client = MCPHttp(guarded.url, token)
    client.initialize()  # POST initialize (200) + POST notifications/initialized (202)
    for n in range(5):
        assert client.call("add", {"a": n, "b": n})["result"]["content"][0]["text"] == str(2 * n)
    assert client.call("add", {"a": "x", "b": 1})["result"]["isError"] is True
    assert client.call("no_such_tool", {})["result"]["isError"] is True
    refused = httpx.post(f"{guarded.url}/mcp", json={}, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert refused.status_code == 401
    stream = SSEStream(guarded.url, token)
    assert stream.status == 200 and stream.next() is not None  # the endpoint event: a session
    during = metrics(guarded)
    assert sample(during, "mcp_active_sessions", transport="streamable_http") == 1
    assert sample(during, "mcp_active_sessions", transport="sse") == 1
    stream.close()
    assert client.http.delete("/mcp", headers=client.headers()).status_code == 200
    after = wait_for_sample(guarded, "mcp_active_sessions", 0, transport="sse")

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("mcp_http_requests_total", endpoint="/mcp", method="POST", status="200") == 8
    assert grew("mcp_http_requests_total", endpoint="/mcp", method="POST", status="202") == 1
    assert grew("mcp_http_requests_total", endpoint="/mcp", method="POST", status="401") == 1
    assert grew("mcp_http_requests_total", endpoint="/mcp", method="DELETE", status="200") == 1
    assert grew("mcp_http_requests_total", endpoint="/sse", method="GET", status="200") == 1
    # Every answer on /mcp is timed; the SSE stream's lifetime is not a latency.
    assert grew("mcp_http_request_duration_seconds_count", endpoint="/mcp") == 11
    assert grew("mcp_http_request_duration_seconds_count", endpoint="/sse") == 0
    assert grew("mcp_tool_calls_total", tool="add", outcome="ok") == 5
    assert grew("mcp_tool_calls_total", tool="add", outcome="error") == 1
    # Unknown names share one label: a client cannot blow up the number of series.
    assert grew("mcp_tool_calls_total", tool="(unknown)", outcome="error") == 1
    assert grew("mcp_tool_call_duration_seconds_count", tool="add") == 6
    assert grew("mcp_tool_call_duration_seconds_count", tool="(unknown)") == 1
    assert grew("mcp_auth_refusals_total", status="401") == 1
    assert grew("mcp_auth_refusals_total", status="403") == 0
    # One database read for the token, then memory for its other 10 requests (the SSE stream
    # among them), and one read for the unknown token.
    assert grew("mcp_token_checks_total", result="database") == 2
    assert grew("mcp_token_checks_total", result="cache_hit") == 10
    assert sample(after, "mcp_active_sessions", transport="streamable_http") == 0
    assert sample(after, "mcp_active_sessions", transport="sse") == 0
    assert grew("mcp_oauth_events_total", kind="client_registered") == 1
    assert grew("mcp_oauth_events_total", kind="consent_granted") == 1
    assert grew("mcp_oauth_events_total", kind="token_issued") == 1
    assert grew("mcp_django_requests_total", route="oauth2_provider:token", status="200") == 1
    assert grew("mcp_django_request_duration_seconds_count", route="oauth2_provider:token") == 1
    client.close()
    browser.close()


@pytest.mark.postgres
@pytest.mark.redis
def test_a_forwarded_call_is_counted_out_on_one_worker_and_in_on_the_other(tmp_path: Path) -> None:
    with fresh_postgres_database() as database_url, fresh_redis_database() as redis_url:
        first, second = worker_pair(
            tmp_path,
            database_url=database_url,
            redis_url=redis_url,
            users=(("fred", "fred-password-123", {}),),
            METRICS_TOKEN=METRICS_TOKEN,
        )
        try:
            browser = Browser(first.url)
            assert browser.login("fred", "fred-password-123").status_code == 302
            token = obtain_token(first.url, browser, resource=first.url)["access_token"]
            browser.close()
            owner = MCPHttp(first.url, token)
            owner.initialize()
            before = (metrics(first), metrics(second))
            through = MCPHttp(second.url, token)
            through.session_id = owner.session_id
            assert through.call("add", {"a": 2, "b": 3})["result"]["content"][0]["text"] == "5"
            after = (metrics(first), metrics(second))
            owner.close()
            through.close()
        finally:
            first.stop()
            second.stop()

    def grew(worker: int, **labels: str) -> float:
        return sample(after[worker], "mcp_forwards_total", **labels) - sample(
            before[worker], "mcp_forwards_total", **labels
        )

    assert grew(1, direction="out", outcome="answered") == 1
    assert grew(0, direction="in", outcome="answered") == 1
    assert grew(0, direction="out", outcome="answered") == 0
    assert grew(1, direction="in", outcome="answered") == 0
    # The tool ran on the owner, so that is where it is counted.
    assert sample(after[0], "mcp_tool_calls_total", tool="add", outcome="ok") == 1
    assert sample(after[1], "mcp_tool_calls_total", tool="add", outcome="ok") == 0


@pytest.mark.postgres
@pytest.mark.redis
def test_json_logs_carry_one_request_id_across_the_forward(tmp_path: Path) -> None:
    with fresh_postgres_database() as database_url, fresh_redis_database() as redis_url:
        first, second = worker_pair(
            tmp_path,
            database_url=database_url,
            redis_url=redis_url,
            users=(("nora", "nora-password-123", {}),),
            LOG_FORMAT="json",
            LOG_LEVEL="INFO",
        )
        try:
            browser = Browser(first.url)
            assert browser.login("nora", "nora-password-123").status_code == 302
            token = obtain_token(first.url, browser, resource=first.url)["access_token"]
            owner = MCPHttp(first.url, token)
            owner.initialize()
            through = MCPHttp(second.url, token)
            through.session_id = owner.session_id
            response = through.post(
                {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, **{"X-Request-ID": "trace-me-42"}
            )
            assert response.status_code == 200
            assert response.headers["x-request-id"] == "trace-me-42"
            owner.close()
            through.close()
        finally:
            first.stop()
            second.stop()

    def records(server: LiveServer) -> list[dict]:
        lines = [line for line in server.log_path.read_text().splitlines() if line.startswith("{")]
        return [json.loads(line) for line in lines]

    took = [r for r in records(second) if r.get("request_id") == "trace-me-42"]
    served = [r for r in records(first) if r.get("request_id") == "trace-me-42"]
    assert any(r["message"].startswith("forwarding POST /mcp") for r in took), took
    assert any(r["message"].startswith("serving POST /mcp forwarded by") for r in served), served
    assert all({"time", "level", "logger", "message"} <= set(r) for r in took + served)
    # Access lines are records with fields too.
    access = [r for r in records(second) if r.get("logger") == "mcpapp.access"]
    assert any(r["path"] == "/mcp" and r["status"] == 200 and "duration_ms" in r for r in access)
