"""Property-based fuzzing of every endpoint a stranger can reach, on a live server with DEBUG off.

hypothesis generates bodies, headers and parameters (well-formed, half-formed and garbage)
for /register, /token, /revoke, /introspect, /authorize (anonymous, and the consent form of a
logged-in user), /mcp and /sse/message (with a token valid on both, and for part of the
examples the id of a real open session, so the messages reach the session), and tools/call
names and arguments (NUL characters, lone surrogates, huge numbers) on both transports.
Whatever it sends, the answer is never a 5xx and never carries a traceback, the OAuth
endpoints answer errors as RFC 6749 JSON, and the server log stays free of tracebacks and
ERRORs (the log check). The server runs on PostgreSQL when it is there, which refuses more
than SQLite does (NUL characters).

Bounded: a fixed number of examples per test (derandomized, so CI sees the same inputs each
run), each answered within REQUEST_SECONDS (hypothesis' deadline), and each test sends for at
most FUZZ_SECONDS. `HYPOTHESIS_PROFILE=explore` runs many more, randomly, for a local hunt
(raise FUZZ_SECONDS with it).
"""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.live import ALICE, LiveServer, create_users, prepare_server
from tests.support.mcp_http import MCPHttp, SSEStream, sse_messages
from tests.support.oauth import Browser, OAuthClient, hidden_fields, obtain_token, pkce_pair
from tests.support.services import _reachable, fresh_postgres_database

# Every request is answered within this (a hang is a failure, not a slow example).
REQUEST_SECONDS = 10
# Each test sends for at most this long; the examples left then pass without sending.
FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "60"))

settings.register_profile(
    "ci",
    max_examples=35,
    derandomize=True,
    deadline=timedelta(seconds=REQUEST_SECONDS * 1.5),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    max_examples=2000,
    deadline=timedelta(seconds=REQUEST_SECONDS * 1.5),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@dataclass
class Budget:
    """One test's time: `spent()` once FUZZ_SECONDS have passed. `done()` fails a test that
    sent too few examples to mean anything."""

    started: float = field(default_factory=time.monotonic)
    sent: int = 0

    def spent(self) -> bool:
        return time.monotonic() - self.started > FUZZ_SECONDS

    def count(self) -> None:
        self.sent += 1

    def done(self) -> None:
        assert self.sent >= min(10, settings().max_examples), f"only {self.sent} examples sent in time"


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


@dataclass
class Fuzzed:
    """The server under fuzz and what a real client of it holds: a token bound to the server's
    origin (valid on /mcp and /sse alike), an open legacy SSE session and an initialized
    Streamable HTTP session, and a logged-in browser on a consent page."""

    server: LiveServer
    token: str
    sse: SSEStream
    sse_session: str
    mcp: MCPHttp
    browser: Browser
    consent_query: dict[str, str]
    consent_form: dict[str, str]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    """On PostgreSQL when the service is there (CI), which refuses more than SQLite does (NUL
    characters), else on SQLite."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with ExitStack() as stack:
        database_url = None
        if os.environ.get("CI", "").lower() == "true" or _reachable("127.0.0.1", 5432):
            database_url = stack.enter_context(fresh_postgres_database())
        yield from _fuzzed_server(tmp, database_url)


def _fuzzed_server(tmp: Path, database_url: str | None) -> Iterator[Fuzzed]:
    server = prepare_server(
        tmp, database_url=database_url, LOGIN_FAILURE_LIMIT="1000", LOGIN_ADDRESS_FAILURE_LIMIT="1000"
    )
    assert server.env["DEBUG"] == "false"
    create_users(server.env, (*ALICE, {}))
    server.start()
    browser = Browser(server.url)
    assert browser.login(*ALICE).status_code == 302
    token = obtain_token(server.url, browser, resource=server.url)["access_token"]
    sse = SSEStream(server.url, token)
    assert sse.status == 200
    endpoint = sse.next()
    assert endpoint is not None and endpoint[0] == "endpoint", endpoint
    sse_session = parse_qs(urlsplit(endpoint[1]).query)["sessionId"][0]
    mcp = MCPHttp(server.url, token)
    mcp.initialize()
    # A consent page for a client of alice's: its form is what the consent tests mutate.
    client = OAuthClient.register(server.url, client_name="Fuzzed consent")
    consent_query = client.authorize_params(pkce_pair()[1], resource=server.url)
    page = browser.http.get("/authorize", params=consent_query)
    assert page.status_code == 200, page.text
    consent_form = hidden_fields(page.text)
    yield Fuzzed(server, token, sse, sse_session, mcp, browser, consent_query, consent_form)
    mcp.close()
    sse.close()
    browser.close()
    server.stop()


OAUTH_JSON_PATHS = ("/register", "/token", "/revoke", "/introspect")


def send(server: LiveServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=REQUEST_SECONDS, follow_redirects=False) as client:
        try:
            return client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            pytest.fail(f"no answer to {method} {path} {kwargs!r} within {REQUEST_SECONDS} s")


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
def test_the_oauth_endpoints_answer_any_post_without_a_server_error(fuzzed: Fuzzed, path: str) -> None:
    budget = Budget()

    @given(payload=body(), extra=headers(fuzzed.token), query=form)
    def attempt(payload: tuple[bytes, str], extra: dict[str, str], query: dict[str, str]) -> None:
        if budget.spent():
            return
        content, content_type = payload
        sent = {"content": content[:300], "content_type": content_type, "headers": extra, "params": query}
        request_headers = {**extra, **({"Content-Type": content_type} if content_type else {})}
        response = send(fuzzed.server, "POST", path, content=content, headers=request_headers, params=query)
        assert_sound(response, path, sent)
        budget.count()

    attempt()
    budget.done()


@pytest.mark.parametrize(
    "path", ["/authorize", "/token", "/register", "/introspect", "/revoke", "/login", "/", "/account/apps"]
)
def test_gets_with_any_query_never_fail(fuzzed: Fuzzed, path: str) -> None:
    budget = Budget()

    @given(query=form, extra=headers(fuzzed.token))
    def attempt(query: dict[str, str], extra: dict[str, str]) -> None:
        if budget.spent():
            return
        response = send(fuzzed.server, "GET", path, params=query, headers=extra)
        assert_sound(response, path, {"params": query, "headers": extra})
        budget.count()

    attempt()
    budget.done()


@pytest.mark.parametrize("path", ["/authorize", "/login", "/login/deny", "/logout"])
def test_the_pages_answer_any_anonymous_form_post_without_a_server_error(fuzzed: Fuzzed, path: str) -> None:
    budget = Budget()

    @given(fields=form, query=form, extra=headers(fuzzed.token))
    def attempt(fields: dict[str, str], query: dict[str, str], extra: dict[str, str]) -> None:
        if budget.spent():
            return
        response = send(fuzzed.server, "POST", path, data=fields, params=query, headers=extra)
        assert_sound(response, path, {"data": fields, "params": query, "headers": extra})
        budget.count()

    attempt()
    budget.done()


@st.composite
def mutated(draw: st.DrawFn, original: dict[str, str]) -> dict[str, str]:
    """`original` with each field kept, dropped or replaced, and fields added."""
    out: dict[str, str] = {}
    for key, kept in original.items():
        choice = draw(st.sampled_from(["keep", "keep", "drop", "replace"]))
        if choice == "keep":
            out[key] = kept
        elif choice == "replace":
            out[key] = draw(value)
    out.update(draw(form))
    return out


def test_the_consent_form_answers_any_post_from_a_logged_in_user_without_a_server_error(
    fuzzed: Fuzzed,
) -> None:
    """What a logged-in user's browser (or a page forging it) can send to the consent form:
    the CSRF token is valid, everything else is mutated."""
    budget = Budget()
    csrf = fuzzed.consent_form["csrfmiddlewaretoken"]
    reached = []

    @given(
        fields=mutated(fuzzed.consent_form),
        decision=st.sampled_from([{"allow": "Authorize"}, {"deny": "Deny"}, {}, {"allow": ""}]),
        query=mutated(fuzzed.consent_query),
    )
    def attempt(fields: dict[str, str], decision: dict[str, str], query: dict[str, str]) -> None:
        if budget.spent():
            return
        data = {**fields, **decision, "csrfmiddlewaretoken": csrf}
        response = fuzzed.browser.http.post(f"/authorize?{urlencode(query)}", data=data)
        assert_sound(response, "/authorize", {"data": data, "params": query})
        reached.append(response.status_code)
        budget.count()

    attempt()
    budget.done()
    # The form was handled, not refused at the CSRF check: redirects with a code or an error,
    # and the page again for what it cannot make sense of.
    assert 302 in reached and 403 not in reached, reached
    assert fuzzed.browser.http.get("/account/apps").status_code == 200  # still logged in


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


@st.composite
def to_the_session(draw: st.DrawFn) -> bytes:
    """A JSON-RPC request or notification with a real method and fuzzed params."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": draw(st.sampled_from(JSONRPC_METHODS))}
    if draw(st.booleans()):
        message["id"] = draw(st.integers(min_value=1, max_value=10**6) | text)
    params = draw(st.none() | json_value | st.dictionaries(text, json_value, max_size=3))
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


@pytest.mark.parametrize("path", ["/mcp", "/sse/message"])
def test_the_mcp_endpoints_answer_any_post_without_a_server_error(fuzzed: Fuzzed, path: str) -> None:
    """Garbage for the MCP endpoints (any headers, token, session and body), and for part of
    the examples well-addressed messages to the real open session with fuzzed content."""
    budget = Budget()
    real = fuzzed.sse_session if path == "/sse/message" else fuzzed.mcp.session_id
    assert real
    addressed: list[int] = []

    @given(
        to_session=st.booleans(),
        content=jsonrpc() | to_the_session(),
        extra=headers(fuzzed.token),
        # A query parameter takes any text; a header only what HTTP lets a client send.
        session=st.none() | (text if path == "/sse/message" else header_value) | st.uuids().map(str),
    )
    def attempt(to_session: bool, content: bytes, extra: dict[str, str], session: str | None) -> None:
        if budget.spent():
            return
        if to_session:  # the real session, as its client addresses it
            request_headers = {"Authorization": f"Bearer {fuzzed.token}", "Content-Type": "application/json"}
            session = real
            if path == "/mcp":
                request_headers.update(fuzzed.mcp.headers())
        else:
            request_headers = {"Content-Type": "application/json", **extra}
        request_headers.setdefault("Accept", "application/json, text/event-stream")
        params = None
        if path == "/sse/message":
            params = {"sessionId": session} if session is not None else None
        elif session is not None and not to_session:
            request_headers.setdefault("Mcp-Session-Id", session)
        response = send(fuzzed.server, "POST", path, content=content, headers=request_headers, params=params)
        assert_sound(response, path, {"content": content[:300], "headers": request_headers, "params": params})
        if to_session:
            addressed.append(response.status_code)
        budget.count()

    attempt()
    budget.done()
    # Messages reached the session itself (202: accepted for the SSE session; 200 or 202: an
    # answer or an accepted notification on /mcp), and the sessions survived what they got.
    assert ({202} if path == "/sse/message" else {200, 202}) & set(addressed), addressed
    assert fuzzed.sse.end is None, f"the SSE session ended ({fuzzed.sse.end})"
    assert fuzzed.mcp.request("ping")["result"] == {}


TOOL_NAMES = ["add", "whoami", "server_stats", "github_user", "nope", "add\x00", "\x00", "a" * 300, "\ud800"]
EXTREMES: list[Any] = [
    10**400,
    -(10**400),
    2**63,
    2**64,
    1e308,
    -1e308,
    5e-324,
    float("inf"),
    float("nan"),
    "\x00",
    "a\x00b",
    "\ud800",
    "9" * 5000,
    "",
    None,
    True,
    [],
    {},
]
any_text = st.text(max_size=40) | st.sampled_from(["\x00", "a\x00", "\ud800\udfff", "é"])
argument = st.recursive(
    st.sampled_from(EXTREMES) | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3),
    max_leaves=8,
)
arguments: st.SearchStrategy[Any] = st.dictionaries(
    st.sampled_from(["a", "b", "hours", "login", "\x00"]) | any_text, argument, max_size=4
) | st.sampled_from([None, [], "x", 10**400])


def tool_call_body(request_id: int, name: str, args: Any) -> bytes:
    params: dict[str, Any] = {"name": name}
    if args is not None:
        params["arguments"] = args
    # json.dumps writes NaN, Infinity and huge integers, and escapes lone surrogates.
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}).encode()


def assert_answered(answer: dict[str, Any], request_id: int, sent: Any) -> None:
    """A tool result (an error result included) or a JSON-RPC error that blames the request."""
    assert answer.get("id") == request_id, (answer, sent)
    assert "Traceback" not in json.dumps(answer), (answer, sent)
    if "error" in answer:
        assert answer["error"]["code"] in {-32600, -32601, -32602}, (answer, sent)
    else:
        assert isinstance(answer["result"].get("content"), list), (answer, sent)


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
def test_tool_calls_with_any_name_and_arguments_are_answered(fuzzed: Fuzzed, transport: str) -> None:
    """Every tools/call reaches the server's tool layer (the real session) and is answered as a
    tool error or a JSON-RPC error, never an internal error; the audit takes whatever name and
    arguments arrived (the log check catches a database that refuses them)."""
    budget = Budget()
    ids = iter(range(1000, 10**6))

    answered: list[int] = []
    ran: list[int] = []

    @given(name=st.sampled_from(TOOL_NAMES) | any_text, args=arguments)
    def attempt(name: str, args: Any) -> None:
        if budget.spent():
            return
        request_id = next(ids)
        content = tool_call_body(request_id, name, args)
        sent = {"content": content[:300], "transport": transport}
        if transport == "streamable_http":
            response = fuzzed.mcp.http.post("/mcp", content=content, headers=fuzzed.mcp.headers())
            accepted = 200
        else:
            response = send(
                fuzzed.server,
                "POST",
                "/sse/message",
                content=content,
                params={"sessionId": fuzzed.sse_session},
                headers={"Authorization": f"Bearer {fuzzed.token}", "Content-Type": "application/json"},
            )
            accepted = 202
        assert_sound(response, transport, sent)
        if response.status_code == 400:
            # JSON the protocol's parser refuses (a lone surrogate, say): a parse error at once.
            assert response.json()["error"]["code"] == -32700, (response.text[:300], sent)
        else:
            assert response.status_code == accepted, (response.status_code, response.text[:300], sent)
            if transport == "streamable_http":
                streamed = response.headers.get("content-type", "").startswith("text/event-stream")
                answers = sse_messages(response.text) if streamed else [response.json()]
            else:
                answers = [next_answer(fuzzed.sse, request_id)]
            matching = [a for a in answers if a.get("id") == request_id]
            assert len(matching) == 1, (answers, sent)
            assert_answered(matching[0], request_id, sent)
            answered.append(request_id)
            if "result" in matching[0]:  # the tool layer ran (a JSON-RPC error stops before it)
                ran.append(request_id)
        budget.count()

    before = audited(fuzzed.server)
    attempt()
    budget.done()
    assert len(answered) >= budget.sent // 2, "most calls should reach the tool layer"
    # Every call that reached the tool layer is audited, whatever its name and arguments: the
    # database took them all (a refused batch would hold back every record after it).
    deadline = time.monotonic() + 20
    while audited(fuzzed.server) - before < len(ran):
        assert time.monotonic() < deadline, f"{audited(fuzzed.server) - before} of {len(ran)} calls audited"
        time.sleep(0.2)


def audited(server: LiveServer) -> int:
    return int(server.sql("SELECT COUNT(*) FROM mcpapp_toolcall")[0][0])


def next_answer(stream: SSEStream, request_id: int) -> dict[str, Any]:
    """The SSE session's answer to `request_id` (earlier answers to other ids are skipped)."""
    deadline = time.monotonic() + REQUEST_SECONDS
    while True:
        try:
            item = stream.next(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no answer to {request_id} on the SSE session within {REQUEST_SECONDS} s")
        assert item is not None, f"the SSE session ended ({stream.end})"
        if item[0] == "message" and item[1].strip():
            message = json.loads(item[1])
            if message.get("id") == request_id:
                return message


def test_denying_consent_with_a_tampered_redirect_uri_sends_nobody_elsewhere(fuzzed: Fuzzed) -> None:
    """Found by the consent fuzz test. The form's client_id and redirect_uri are hidden fields:
    an answer, Deny or Approve, goes back only to a redirect URI the client registered, and an
    unknown client gets the error page."""
    answers = {}
    tampered_forms = {
        "deny, not a URI": {"redirect_uri": "not-a-uri"},
        "deny, elsewhere": {"redirect_uri": "https://elsewhere.example/cb"},
        "approve, elsewhere": {"redirect_uri": "https://elsewhere.example/cb", "allow": "Approve"},
        "deny, unknown client": {"client_id": "no-such-client"},
    }
    for name, change in tampered_forms.items():
        data = {**fuzzed.consent_form, **change}  # without "allow" the user denies
        response = fuzzed.browser.http.post(f"/authorize?{urlencode(fuzzed.consent_query)}", data=data)
        answers[name] = (response.status_code, response.headers.get("location", ""), response.text)
    for name, (status, location, page) in answers.items():
        assert status == 400 and not location, (name, status, location)
        assert "Invalid client_id" in page or "Mismatching redirect URI" in page, (name, page[:500])
    # The untouched form still denies as before: back to the client with access_denied.
    response = fuzzed.browser.http.post(
        f"/authorize?{urlencode(fuzzed.consent_query)}", data=dict(fuzzed.consent_form)
    )
    assert response.status_code == 302, response.text[:300]
    location = response.headers["location"]
    assert location.startswith(fuzzed.consent_form["redirect_uri"]) and "error=access_denied" in location
