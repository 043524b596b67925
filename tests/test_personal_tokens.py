"""Personal access tokens, over real HTTP: made on the connected-apps page or by the command, used
with `Authorization: Bearer` on both MCP transports, expired, revoked (refused at once)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.support.live import ROOT, LiveServer, manage
from tests.support.mcp_http import ACCEPT, MCPHttp, SSEStream, initialize_body
from tests.support.oauth import Browser, OAuthClient, admin_action, csrf_from, introspect

TOKENS_ADMIN = "/admin/oauthapp/personalaccesstoken/"
ADD: dict[str, Any] = {"name": "add", "arguments": {"a": 23, "b": 19}}


def create_on_page(browser: Browser, name: str, expires_in_days: str = "") -> httpx.Response:
    page = browser.http.get("/account/apps")
    assert page.status_code == 200
    return browser.http.post(
        "/account/tokens",
        data={"csrfmiddlewaretoken": csrf_from(page.text), "name": name, "expires_in_days": expires_in_days},
    )


def token_on(page: httpx.Response) -> str:
    match = re.search(r'<pre id="new-token-value">([^<]+)</pre>', page.text)
    assert match, page.text
    return match.group(1)


def create_with_command(server: LiveServer, *args: str) -> str:
    return manage(server.env, "create_personal_token", *args).strip()


def row_of(server: LiveServer, token: str) -> dict[str, Any]:
    checksum = hashlib.sha256(token.encode()).hexdigest()
    rows = server.sql(
        "SELECT p.id, p.name, p.expires, p.last_used_at, p.revoked_at, "
        "t.id, t.token, t.scope, t.resource, a.name "
        "FROM oauthapp_personalaccesstoken p "
        "LEFT JOIN oauth2_provider_accesstoken t ON t.id = p.access_token_id "
        "LEFT JOIN oauthapp_application a ON a.id = t.application_id "
        "WHERE t.token_checksum = ?",
        (checksum,),
    )
    assert len(rows) == 1, rows
    keys = ("id", "name", "expires", "last_used_at", "revoked_at", "access_token_id", "stored", "scope")
    return {
        **dict(zip(keys, rows[0][:8], strict=True)),
        "resource": json.loads(rows[0][8]),
        "client": rows[0][9],
    }


def add_over_mcp(server: LiveServer, token: str) -> str:
    mcp = MCPHttp(server.url, token)
    try:
        mcp.initialize()
        return str(mcp.call(ADD["name"], ADD["arguments"])["result"]["content"][0]["text"])
    finally:
        mcp.close()


def post_sse(server: LiveServer, path: str, token: str, body: dict[str, Any]) -> int:
    return httpx.post(
        f"{server.url}{path}",
        content=json.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": ACCEPT},
        timeout=10,
    ).status_code


def add_over_sse(server: LiveServer, token: str) -> str:
    stream = SSEStream(server.url, token)
    try:
        assert stream.status == 200
        event = stream.next()
        assert event is not None and event[0] == "endpoint"
        endpoint = event[1]
        assert post_sse(server, endpoint, token, initialize_body("2024-11-05")) == 202
        assert stream.next_message()["result"]["protocolVersion"] == "2024-11-05"
        assert (
            post_sse(server, endpoint, token, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            == 202
        )
        assert (
            post_sse(
                server, endpoint, token, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": ADD}
            )
            == 202
        )
        answer = stream.next_message()
        assert answer["id"] == 2
        return str(answer["result"]["content"][0]["text"])
    finally:
        stream.close()


def mcp_status(server: LiveServer, token: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/mcp",
        content=json.dumps(initialize_body()),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": ACCEPT},
        timeout=10,
    )


# --- Made on the page --------------------------------------------------------------------------


def test_a_user_makes_a_token_on_the_page_sees_it_once_and_uses_it_on_both_transports(
    server: LiveServer, alice_browser: Browser, introspector: OAuthClient
) -> None:
    created = create_on_page(alice_browser, "Claude Code on my laptop")
    assert created.status_code == 200
    assert created.headers["cache-control"] == "no-store"
    token = token_on(created)
    assert token.startswith("mcp_pat_")

    row = row_of(server, token)
    assert row["name"] == "Claude Code on my laptop"
    assert row["expires"].startswith("9999-01-01")  # no expiry
    assert row["stored"] == ""  # only the checksum is kept
    assert row["scope"] == "mcp" and row["resource"] == [server.url]
    assert row["client"] == "Personal access token"
    # Shown once: the page lists it by name from now on, never the token.
    again = alice_browser.http.get("/account/apps")
    assert "Claude Code on my laptop" in again.text and token not in again.text

    assert add_over_mcp(server, token) == "42"
    assert add_over_sse(server, token) == "42"
    seen = introspect(introspector, token)
    assert seen["active"] is True and seen["username"] == "alice" and seen["aud"] == [server.url]


@pytest.mark.parametrize(
    ("name", "days", "message"),
    [
        ("", "", "This field is required."),
        ("zero days", "0", "greater than or equal to 1"),
        ("too long", "3651", "less than or equal to 3650"),
        ("not a number", "soon", "Enter a whole number."),
        ("x" * 101, "", "at most 100 characters"),
    ],
)
def test_the_page_refuses_a_bad_name_or_expiry(
    server: LiveServer, alice_browser: Browser, name: str, days: str, message: str
) -> None:
    before = server.sql("SELECT COUNT(*) FROM oauthapp_personalaccesstoken")[0][0]
    refused = create_on_page(alice_browser, name, days)
    assert refused.status_code == 400
    assert message in refused.text
    assert 'id="new-token"' not in refused.text
    assert server.sql("SELECT COUNT(*) FROM oauthapp_personalaccesstoken")[0][0] == before


def test_a_token_with_an_expiry_expires(server: LiveServer, alice_browser: Browser) -> None:
    token = token_on(create_on_page(alice_browser, "expiring", "30"))
    row = row_of(server, token)
    assert not row["expires"].startswith("9999")
    server.sql(
        "UPDATE oauth2_provider_accesstoken SET expires = '2000-01-01 00:00:00' WHERE id = ?",
        (row["access_token_id"],),
    )
    server.sql(
        "UPDATE oauthapp_personalaccesstoken SET expires = '2000-01-01 00:00:00' WHERE id = ?", (row["id"],)
    )
    refused = mcp_status(server, token)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    page = alice_browser.http.get("/account/apps")
    assert re.search(r"<strong>expiring</strong> <span class=\"muted\">\(expired\)</span>", page.text)


def test_revoking_a_token_on_the_page_refuses_it_at_once(server: LiveServer, alice_browser: Browser) -> None:
    token = token_on(create_on_page(alice_browser, "to revoke"))
    assert add_over_mcp(server, token) == "42"  # its check is cached now
    stream = SSEStream(server.url, token)
    assert stream.status == 200
    row = row_of(server, token)

    page = alice_browser.http.get("/account/apps")
    revoked = alice_browser.http.post(
        f"/account/tokens/{row['id']}/revoke", data={"csrfmiddlewaretoken": csrf_from(page.text)}
    )
    assert revoked.status_code == 302 and revoked.headers["location"] == "/account/apps"

    assert mcp_status(server, token).status_code == 401
    assert stream.ended_within(15)  # the open stream re-checks its token and ends
    stream.close()
    assert server.sql(
        "SELECT revoked_at IS NOT NULL, access_token_id FROM oauthapp_personalaccesstoken WHERE id = ?",
        (row["id"],),
    ) == [(1, None)]
    assert server.sql(
        "SELECT COUNT(*) FROM oauth2_provider_accesstoken WHERE id = ?", (row["access_token_id"],)
    ) == [(0,)]
    listing = alice_browser.http.get("/account/apps").text
    assert '<strong>to revoke</strong> <span class="muted">(revoked)</span>' in listing
    assert f"/account/tokens/{row['id']}/revoke" not in listing


def test_nobody_else_can_revoke_a_users_token(
    server: LiveServer, alice_browser: Browser, bob_browser: Browser
) -> None:
    token = token_on(create_on_page(alice_browser, "alice's"))
    row = row_of(server, token)
    page = bob_browser.http.get("/account/apps")
    assert "alice&#x27;s" not in page.text
    response = bob_browser.http.post(
        f"/account/tokens/{row['id']}/revoke", data={"csrfmiddlewaretoken": csrf_from(page.text)}
    )
    assert response.status_code == 404
    assert alice_browser.http.get(f"/account/tokens/{row['id']}/revoke").status_code == 405
    assert add_over_mcp(server, token) == "42"


def test_the_page_shows_when_a_token_was_last_used(server: LiveServer, alice_browser: Browser) -> None:
    token = token_on(create_on_page(alice_browser, "batched use"))
    row = row_of(server, token)
    assert row["last_used_at"] is None
    # What the MCP server calls, in batches, off the request path.
    ids = row["access_token_id"]
    mark = (
        "from datetime import timedelta; from django.utils import timezone; "
        "from oauthapp.services import personal_tokens_mark_used as mark; now = timezone.now(); "
        f"mark(access_token_ids=[{ids}], when=now - timedelta(minutes=5)); "
        f"mark(access_token_ids=[{ids}, 999999], when=now - timedelta(hours=3))"
    )
    manage(server.env, "shell", "-c", mark)
    used = row_of(server, token)["last_used_at"]
    assert used is not None  # and the older batch did not move it back:
    page = alice_browser.http.get("/account/apps").text
    rows = page[page.index('id="personal-token-list"') :]
    cells = rows[rows.index("<strong>batched use</strong>") :][:400]
    assert "5\xa0minutes ago" in cells


def test_each_of_a_users_tokens_shows_its_own_last_use(server: LiveServer, alice_browser: Browser) -> None:
    # Every personal token of a user belongs to one client: used back to back, each must still
    # be marked used (the "last used" throttle is per token, not per client and user).
    first = token_on(create_on_page(alice_browser, "laptop"))
    second = token_on(create_on_page(alice_browser, "desktop"))
    assert add_over_mcp(server, first) == "42"
    assert add_over_mcp(server, second) == "42"

    deadline = time.monotonic() + 10
    while not all(row_of(server, t)["last_used_at"] for t in (first, second)):
        assert time.monotonic() < deadline, [row_of(server, t)["last_used_at"] for t in (first, second)]
        time.sleep(0.1)
    page = alice_browser.http.get("/account/apps").text
    rows = page[page.index('id="personal-token-list"') :]
    for name in ("laptop", "desktop"):
        cells = rows[rows.index(f"<strong>{name}</strong>") :][:400]
        assert "0\xa0minutes ago" in cells, cells


# --- The command -------------------------------------------------------------------------------


def test_the_command_prints_a_token_that_works(server: LiveServer) -> None:
    token = create_with_command(server, "alice", "--name", "ci job", "--expires-days", "7")
    assert token.startswith("mcp_pat_") and "\n" not in token
    row = row_of(server, token)
    assert row["name"] == "ci job" and not row["expires"].startswith("9999")
    assert add_over_mcp(server, token) == "42"
    never = create_with_command(server, "bob", "--name", "no expiry")
    assert row_of(server, never)["expires"].startswith("9999-01-01")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody", "--name", "x"], "No user 'nobody'"),
        (["alice", "--name", "x", "--expires-days", "0"], "expires_in_days"),
        (["alice", "--name", ""], "name"),
    ],
)
def test_the_command_refuses_bad_input(server: LiveServer, args: list[str], message: str) -> None:
    before = server.sql("SELECT COUNT(*) FROM oauthapp_personalaccesstoken")[0][0]
    result = subprocess.run(
        [sys.executable, "manage.py", "create_personal_token", *args],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert server.sql("SELECT COUNT(*) FROM oauthapp_personalaccesstoken")[0][0] == before


def test_a_token_made_for_another_port_says_where_it_works_and_is_refused_with_both_named(
    server: LiveServer,
) -> None:
    """`make run PORT=8799` with the command run without PORT: the token is bound to :8787. The
    command says so when it prints the token, and the 401 names both origins."""
    env = {key: value for key, value in server.env.items() if key != "PUBLIC_URL"}
    result = subprocess.run(
        [sys.executable, "manage.py", "create_personal_token", "alice", "--name", "wrong port"],
        cwd=ROOT,
        env={**env, "PORT": "8701"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    token = result.stdout.strip()
    assert token.startswith("mcp_pat_")
    assert "It works on http://localhost:8701/mcp and http://localhost:8701/sse only" in result.stderr
    assert "run this command with PORT=<port>" in result.stderr
    response = mcp_status(server, token)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert f'"The access token is for http://localhost:8701, not {server.url}/mcp"' in challenge, challenge
    assert response.json()["error_description"] == (
        f"The access token is for http://localhost:8701, not {server.url}/mcp"
    )


# --- Operators ---------------------------------------------------------------------------------


def test_operators_see_tokens_without_their_value_and_revoke_them(
    server: LiveServer, operator_browser: Browser
) -> None:
    token = create_with_command(server, "bob", "--name", "bob's build")
    row = row_of(server, token)
    listing = operator_browser.http.get(TOKENS_ADMIN)
    assert listing.status_code == 200
    assert "bob&#x27;s build" in listing.text and token not in listing.text
    detail = operator_browser.http.get(f"{TOKENS_ADMIN}{row['id']}/change/")
    assert detail.status_code == 200 and token not in detail.text
    assert operator_browser.http.get(f"{TOKENS_ADMIN}add/").status_code == 403

    admin_action(operator_browser, TOKENS_ADMIN, "revoke_tokens", row["id"])
    assert mcp_status(server, token).status_code == 401


def test_the_personal_token_client_cannot_get_tokens_itself(server: LiveServer) -> None:
    create_with_command(server, "alice", "--name", "makes the client exist")
    # The grant it was made with is not one /token offers at all...
    response = httpx.post(
        f"{server.url}/token",
        data={"grant_type": "client_credentials", "client_id": "personal-access-tokens"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"
    # ...and a grant /token does offer needs the client's secret, which nobody knows.
    response = httpx.post(
        f"{server.url}/token",
        data={"grant_type": "refresh_token", "refresh_token": "x", "client_id": "personal-access-tokens"},
        timeout=10,
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
