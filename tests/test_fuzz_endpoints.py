"""Property-based fuzzing of every endpoint a stranger can reach, on a live server with DEBUG off.

hypothesis generates bodies, headers and parameters (well-formed, half-formed and garbage)
for /register, /token, /revoke, /introspect, /authorize, /mcp and /sse/message. Whatever
it sends, the answer is never a 5xx and never carries a traceback, the OAuth endpoints
answer errors as RFC 6749 JSON, and the server log stays free of tracebacks.

Bounded: a fixed number of examples per endpoint (derandomized, so CI sees the same inputs
each run). `HYPOTHESIS_PROFILE=explore` runs many more, randomly, for a local hunt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.live import ALICE, LiveServer, create_users, prepare_server
from tests.support.oauth import Browser, obtain_token
from tests.support.services import _reachable, fresh_postgres_database

settings.register_profile(
    "ci",
    max_examples=35,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

OAUTH_PARAMS = [
    "grant_type",
    "code",
    "client_id",
    "client_secret",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "token",
    "token_type_hint",
    "scope",
    "resource",
    "response_type",
    "state",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "nonce",
    "device_code",
    "username",
    "password",
]
GRANTS = [
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "password",
    "implicit",
    "urn:ietf:params:oauth:grant-type:device_code",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "",
]
CONTENT_TYPES = [
    "application/x-www-form-urlencoded",
    "application/json",
    "application/json; charset=latin-1",
    "text/plain",
    "application/x-www-form-urlencoded; charset=utf-16",
    "",
    "*/*",
]

# Text that survives HTTP encoding: no lone surrogates (httpx cannot send them; raw bytes do).
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
weird = st.sampled_from(
    ["", " ", "\x00", "%00", "null", "[]", "{}", "é" * 3, "a" * 3000, "\ufeff", "../../etc"]
)
value = st.one_of(text, weird, st.sampled_from(GRANTS), st.integers().map(str))
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | text | weird,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
form = st.dictionaries(st.one_of(st.sampled_from(OAUTH_PARAMS), text), value, max_size=8)
raw = st.binary(max_size=400)
# What h11 lets a client send: printable ASCII, no surrounding whitespace.
header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80).map(str.strip)


@st.composite
def body(draw: st.DrawFn) -> tuple[bytes, str]:
    """(body, content type): form-encoded, JSON (with surrogates escaped), or raw bytes."""
    kind = draw(st.sampled_from(["form", "json", "raw", "surrogate-json"]))
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if kind == "form":
        return httpx.QueryParams(draw(form)).__str__().encode(), content_type
    if kind == "json":
        return json.dumps(draw(json_value)).encode(), content_type
    if kind == "surrogate-json":
        return (
            b'{"client_name": "\\ud800", "redirect_uris": ["http://localhost/cb"], "x": "\\udfff"}',
            content_type,
        )
    return draw(raw), content_type


@st.composite
def headers(draw: st.DrawFn, token: str) -> dict[str, str]:
    chosen: dict[str, str] = {}
    auth = draw(st.sampled_from(["none", "bearer", "bearer-garbage", "basic", "garbage"]))
    if auth == "bearer":
        chosen["Authorization"] = f"Bearer {token}"
    elif auth == "bearer-garbage":
        chosen["Authorization"] = f"Bearer {draw(header_value)}".strip()
    elif auth == "basic":
        chosen["Authorization"] = f"Basic {draw(header_value)}".strip()
    elif auth == "garbage":
        chosen["Authorization"] = draw(header_value)
    for name in draw(
        st.lists(
            st.sampled_from(
                [
                    "Accept",
                    "Origin",
                    "Mcp-Session-Id",
                    "Mcp-Protocol-Version",
                    "Last-Event-ID",
                    "X-Forwarded-For",
                ]
            ),
            max_size=3,
            unique=True,
        )
    ):
        chosen[name] = draw(
            st.one_of(
                header_value,
                st.sampled_from(
                    [
                        "application/json, text/event-stream",
                        "text/event-stream",
                        "2025-06-18",
                        "2026-07-28",
                        "null",
                    ]
                ),
            )
        )
    return chosen


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    """The server under fuzz: on PostgreSQL when the service is there (CI), which refuses
    more than SQLite does (NUL characters), else on SQLite."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with ExitStack() as stack:
        database_url = None
        if os.environ.get("CI", "").lower() == "true" or _reachable("127.0.0.1", 5432):
            database_url = stack.enter_context(fresh_postgres_database())
        yield from _fuzzed_server(tmp, database_url)


def _fuzzed_server(tmp: Path, database_url: str | None) -> Iterator[tuple[LiveServer, str]]:
    server = prepare_server(
        tmp, database_url=database_url, LOGIN_FAILURE_LIMIT="1000", LOGIN_ADDRESS_FAILURE_LIMIT="1000"
    )
    assert server.env["DEBUG"] == "false"
    create_users(server.env, (*ALICE, {}))
    server.start()
    browser = Browser(server.url)
    assert browser.login(*ALICE).status_code == 302
    token = obtain_token(server.url, browser, resource=f"{server.url}/mcp")["access_token"]
    browser.close()
    yield server, token
    server.stop()
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-8000:]


OAUTH_JSON_PATHS = ("/register", "/token", "/revoke", "/introspect")


def send(server: LiveServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30, follow_redirects=False) as client:
        try:
            return client.request(method, path, **kwargs)
        except httpx.ReadTimeout:
            pytest.fail(f"no answer to {method} {path} {kwargs!r}")


def assert_sound(response: httpx.Response, path: str, sent: Any) -> None:
    assert response.status_code < 500, (path, sent, response.status_code, response.text[:500])
    assert "Traceback" not in response.text, (path, sent, response.text[:500])
    if path in OAUTH_JSON_PATHS and response.status_code >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), (
            path,
            sent,
            response.text,
        )
        assert "error" in response.json(), (path, sent, response.text)


@pytest.mark.parametrize("path", OAUTH_JSON_PATHS)
def test_the_oauth_endpoints_answer_any_post_without_a_server_error(
    fuzzed: tuple[LiveServer, str], path: str
) -> None:
    server, token = fuzzed

    @given(payload=body(), extra=headers(token), query=form)
    def attempt(payload: tuple[bytes, str], extra: dict[str, str], query: dict[str, str]) -> None:
        content, content_type = payload
        sent = {"content": content[:300], "content_type": content_type, "headers": extra, "params": query}
        request_headers = {**extra, **({"Content-Type": content_type} if content_type else {})}
        response = send(server, "POST", path, content=content, headers=request_headers, params=query)
        assert_sound(response, path, sent)

    attempt()


@pytest.mark.parametrize(
    "path", ["/authorize", "/token", "/register", "/introspect", "/revoke", "/login", "/", "/account/apps"]
)
def test_gets_with_any_query_never_fail(fuzzed: tuple[LiveServer, str], path: str) -> None:
    server, token = fuzzed

    @given(query=form, extra=headers(token))
    def attempt(query: dict[str, str], extra: dict[str, str]) -> None:
        response = send(server, "GET", path, params=query, headers=extra)
        assert_sound(response, path, {"params": query, "headers": extra})

    attempt()


@pytest.mark.parametrize("path", ["/authorize", "/login", "/login/deny", "/logout"])
def test_the_pages_answer_any_form_post_without_a_server_error(
    fuzzed: tuple[LiveServer, str], path: str
) -> None:
    server, token = fuzzed

    @given(fields=form, query=form, extra=headers(token))
    def attempt(fields: dict[str, str], query: dict[str, str], extra: dict[str, str]) -> None:
        response = send(server, "POST", path, data=fields, params=query, headers=extra)
        assert_sound(response, path, {"data": fields, "params": query, "headers": extra})

    attempt()


JSONRPC_METHODS = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "prompts/get",
    "notifications/initialized",
]


@st.composite
def jsonrpc(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["message", "batch", "anything", "raw"]))
    message = st.fixed_dictionaries(
        {},
        optional={
            "jsonrpc": st.sampled_from(["2.0", "1.0", ""]) | json_value,
            "id": st.integers() | text | st.none() | json_value,
            "method": st.sampled_from(JSONRPC_METHODS) | text,
            "params": json_value
            | st.fixed_dictionaries(
                {},
                optional={
                    "name": st.sampled_from(["add", "whoami", "nope"]) | text,
                    "arguments": json_value,
                    "protocolVersion": st.sampled_from(["2025-06-18", "2024-11-05"]) | text,
                    "capabilities": json_value,
                    "clientInfo": json_value,
                },
            ),
        },
    )
    if shape == "message":
        return json.dumps(draw(message)).encode()
    if shape == "batch":
        return json.dumps(draw(st.lists(message, max_size=3))).encode()
    if shape == "anything":
        return json.dumps(draw(json_value)).encode()
    return draw(raw)


@pytest.mark.parametrize("path", ["/mcp", "/sse/message"])
def test_the_mcp_endpoints_answer_any_post_without_a_server_error(
    fuzzed: tuple[LiveServer, str], path: str
) -> None:
    server, token = fuzzed

    @given(content=jsonrpc(), extra=headers(token), session=st.none() | text | st.uuids().map(str))
    def attempt(content: bytes, extra: dict[str, str], session: str | None) -> None:
        params = {"sessionId": session} if session is not None and path == "/sse/message" else None
        request_headers = {"Content-Type": "application/json", **extra}
        if "Accept" not in request_headers:
            request_headers["Accept"] = "application/json, text/event-stream"
        response = send(server, "POST", path, content=content, headers=request_headers, params=params)
        assert_sound(response, path, {"content": content[:300], "headers": extra, "params": params})

    attempt()
