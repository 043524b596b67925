"""The official MCP conformance suite against /mcp, with the conformance fixtures switched on.

The suite's runner has no option for an Authorization header, so the test obtains a token
through our OAuth flow (register, login form, consent, PKCE) and a committed preload
(tests/support/inject-auth.mjs) adds it to every request the runner makes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.live import LiveServer, create_user, prepare_server
from tests.support.node import SUPPORT, node_command, node_env, require_node_tools, run_bounded
from tests.support.oauth import Browser, obtain_token

pytestmark = pytest.mark.e2e

# Every server scenario of @modelcontextprotocol/conformance 0.1.16 (`--suite all`: the
# default suite and the pending ones). A new version that adds scenarios makes the test fail
# until they are looked at and listed here.
ALL_SCENARIOS = {
    "json-schema-2020-12",
    "server-sse-polling",
    "server-initialize",
    "logging-set-level",
    "ping",
    "completion-complete",
    "tools-list",
    "tools-call-simple-text",
    "tools-call-image",
    "tools-call-audio",
    "tools-call-embedded-resource",
    "tools-call-mixed-content",
    "tools-call-with-logging",
    "tools-call-error",
    "tools-call-with-progress",
    "tools-call-sampling",
    "tools-call-elicitation",
    "elicitation-sep1034-defaults",
    "server-sse-multiple-streams",
    "elicitation-sep1330-enums",
    "resources-list",
    "resources-read-text",
    "resources-read-binary",
    "resources-templates-read",
    "resources-subscribe",
    "resources-unsubscribe",
    "prompts-list",
    "prompts-get-simple",
    "prompts-get-with-args",
    "prompts-get-embedded-resource",
    "prompts-get-with-image",
    "dns-rebinding-protection",
}

USER = ("conformance", "conformance-password-123")


@pytest.fixture(scope="module")
def fixture_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    require_node_tools()
    server = prepare_server(tmp_path_factory.mktemp("conformance"), MCP_CONFORMANCE_FIXTURES="true")
    create_user(server.env, *USER)
    server.start()
    yield server
    server.stop()


def run_suite(server: LiveServer, token: str, results: Path) -> tuple[Any, dict[str, list[dict[str, Any]]]]:
    completed = run_bounded(
        node_command(
            "conformance",
            "server",
            "--url",
            f"{server.url}/mcp",
            "--suite",
            "all",
            "-o",
            str(results),
            node_options=("--import", str(SUPPORT / "inject-auth.mjs")),
        ),
        env=node_env(CONFORMANCE_BEARER_TOKEN=token),
        timeout=180,
    )
    checks: dict[str, list[dict[str, Any]]] = {}
    for path in results.glob("server-*/checks.json"):
        # server-<scenario>-<ISO timestamp with dashes>
        scenario = re.sub(r"-\d{4}-\d\d-\d\dT[\d-]+Z$", "", path.parent.name.removeprefix("server-"))
        checks[scenario] = json.loads(path.read_text())
    return completed, checks


def test_it_passes_every_scenario_of_the_whole_server_suite(
    fixture_server: LiveServer, tmp_path: Path
) -> None:
    browser = Browser(fixture_server.url)
    assert browser.login(*USER).status_code == 302
    token = obtain_token(fixture_server.url, browser, resource=f"{fixture_server.url}/mcp")["access_token"]
    browser.close()

    completed, checks = run_suite(fixture_server, token, tmp_path / "results")

    report = f"{completed.stdout[-6000:]}\n{completed.stderr[-3000:]}\n{fixture_server.log()[-3000:]}"
    assert sorted(set(checks) ^ ALL_SCENARIOS) == [], report
    failed = {
        scenario: [(c["id"], c.get("errorMessage")) for c in results if c["status"] == "FAILURE"]
        for scenario, results in checks.items()
    }
    assert {s: f for s, f in failed.items() if f} == {}, report
    assert sum(len(results) for results in checks.values()) >= len(ALL_SCENARIOS)
    assert completed.returncode == 0, report
    assert "Total: " in completed.stdout and " 0 failed" in completed.stdout.split("Total: ")[-1]


def test_dns_rebinding_is_refused_by_host_and_origin_even_with_a_valid_token(
    fixture_server: LiveServer, tmp_path: Path
) -> None:
    # The preload gives the scenario's raw requests the token too, so the forged Host/Origin
    # request can only be refused by our Host/Origin checks, not by the missing credentials.
    browser = Browser(fixture_server.url)
    assert browser.login(*USER).status_code == 302
    token = obtain_token(fixture_server.url, browser)["access_token"]
    browser.close()
    completed = run_bounded(
        node_command(
            "conformance",
            "server",
            "--url",
            f"{fixture_server.url}/mcp",
            "--scenario",
            "dns-rebinding-protection",
            "-o",
            str(tmp_path),
            node_options=("--import", str(SUPPORT / "inject-auth.mjs")),
        ),
        env=node_env(CONFORMANCE_BEARER_TOKEN=token),
        timeout=60,
    )
    (path,) = tmp_path.glob("server-dns-rebinding-protection-*/checks.json")
    results = json.loads(path.read_text())
    statuses = {c["details"]["hostHeader"]: (c["status"], c["details"]["statusCode"]) for c in results}
    assert statuses == {
        "evil.example.com": ("SUCCESS", 403),
        f"127.0.0.1:{fixture_server.port}": ("SUCCESS", 200),
    }, completed.stdout
