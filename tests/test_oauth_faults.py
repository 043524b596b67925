"""Issue 9, the OAuth side: Redis and PostgreSQL outages, and races between two workers.

Private instances (tests/support/private_services.py) are stopped and started here; the
shared services are never touched. Skipped locally when the binaries are absent, a failure
under CI=true.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.live import ALICE, LiveServer, create_users, deployed_server, worker_pair
from tests.support.oauth import Browser, OAuthClient
from tests.support.private_services import PrivatePostgres, PrivateRedis
from tests.support.services import fresh_redis_database

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def checksum(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def live_access_tokens(server: LiveServer, client: OAuthClient) -> int:
    return server.sql(
        "SELECT COUNT(*) FROM oauth2_provider_accesstoken t JOIN oauthapp_application a "
        "ON a.id = t.application_id WHERE a.client_id = ?",
        (client.client_id,),
    )[0][0]


def token_exists(server: LiveServer, token: str) -> bool:
    return server.sql(
        "SELECT COUNT(*) FROM oauth2_provider_accesstoken WHERE token_checksum = ?", (checksum(token),)
    ) == [(1,)]


def assert_unavailable(response: httpx.Response) -> None:
    """A retryable 503: RFC 6749 temporarily_unavailable JSON with Retry-After."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "temporarily_unavailable"


def assert_no_traceback(server: LiveServer) -> None:
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-5000:]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The shared Redis (a database of this module's own), for tests that do not stop it:
    compose's workers always have one."""
    with fresh_redis_database() as url:
        yield url


# --- Redis down: the OAuth endpoints do not need it ------------------------------------------------


def test_redis_down_stops_neither_token_nor_register_and_recovery_needs_no_restart(
    tmp_path: Path, postgres: PrivatePostgres
) -> None:
    with PrivateRedis() as redis_server:
        server = deployed_server(
            tmp_path, database_url=postgres.create_database("redis_outage"), redis_url=redis_server.url
        )
        create_users(server.env, (*ALICE, {}))
        server.start()
        try:
            browser = Browser(server.url)
            assert browser.login(*ALICE).status_code == 302
            client = OAuthClient.register(server.url)
            query, verifier = client.authorize(browser)
            tokens = client.exchange(query["code"], verifier).json()

            redis_server.stop()
            during = OAuthClient.register(server.url)  # the rate limit is skipped, not fatal
            query, verifier = during.authorize(browser)
            exchanged = during.exchange(query["code"], verifier)
            assert exchanged.status_code == 200, exchanged.text
            refreshed = client.refresh(tokens["refresh_token"])
            assert refreshed.status_code == 200, refreshed.text
            assert live_access_tokens(server, client) == 1

            redis_server.start()  # back, and empty
            after = OAuthClient.register(server.url)
            query, verifier = after.authorize(browser)
            assert after.exchange(query["code"], verifier).status_code == 200
            assert client.refresh(refreshed.json()["refresh_token"]).status_code == 200
            browser.close()
        finally:
            server.stop()
        assert_no_traceback(server)


# --- PostgreSQL down: 503s, nothing half done, recovery ------------------------------------------


def test_postgres_down_gives_503s_spends_nothing_and_recovers_by_itself(
    tmp_path: Path, postgres: PrivatePostgres, redis_url: str
) -> None:
    server = deployed_server(
        tmp_path, database_url=postgres.create_database("pg_outage"), redis_url=redis_url
    )
    create_users(server.env, (*ALICE, {}))
    server.start()
    try:
        browser = Browser(server.url)
        assert browser.login(*ALICE).status_code == 302
        client = OAuthClient.register(server.url)
        query, verifier = client.authorize(browser)
        tokens = client.exchange(query["code"], verifier).json()
        pending, pending_verifier = client.authorize(browser)

        postgres.stop()
        try:
            assert_unavailable(client.exchange(pending["code"], pending_verifier))
            assert_unavailable(client.refresh(tokens["refresh_token"]))
            assert_unavailable(
                httpx.post(f"{server.url}/register", json={"redirect_uris": ["http://localhost:3000/cb"]})
            )
            assert_unavailable(httpx.post(f"{server.url}/revoke", data={"token": "x", "client_id": "y"}))
            for page in ("/login", "/authorize?client_id=x", "/account/apps"):
                shown = browser.http.get(page)
                assert shown.status_code == 503, (page, shown.text)
                assert shown.headers["retry-after"] == "5"
                assert "Try again in a moment" in shown.text
        finally:
            postgres.start()

        # The code and the refresh token that met the outage still work: nothing was spent.
        exchanged = client.exchange(pending["code"], pending_verifier)
        assert exchanged.status_code == 200, exchanged.text
        refreshed = client.refresh(tokens["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text
        # Exactly the tokens that were delivered exist: one per exchange, the refreshed one replacing its own.
        assert live_access_tokens(server, client) == 2
        assert token_exists(server, exchanged.json()["access_token"])
        assert token_exists(server, refreshed.json()["access_token"])
        assert browser.http.get("/account/apps").status_code == 200
        browser.close()
    finally:
        server.stop()
    assert_no_traceback(server)


# --- Races between two workers on one database ----------------------------------------------------


@pytest.fixture(scope="module")
def two_workers(
    tmp_path_factory: pytest.TempPathFactory, postgres: PrivatePostgres, redis_url: str
) -> Iterator[tuple[LiveServer, LiveServer]]:
    tmp = tmp_path_factory.mktemp("races")
    url = postgres.create_database("races")
    first, second = worker_pair(tmp, database_url=url, redis_url=redis_url, users=((*ALICE, {}),))
    yield first, second
    first.stop()
    second.stop()
    assert_no_traceback(first)
    assert_no_traceback(second)


def at_once(*calls: tuple[OAuthClient, dict[str, str]]) -> list[httpx.Response]:
    """POST each /token body to its worker at the same moment."""
    barrier = threading.Barrier(len(calls))
    results: list[httpx.Response | None] = [None] * len(calls)

    def run(index: int, client: OAuthClient, body: dict[str, str]) -> None:
        barrier.wait()
        results[index] = client.token(**body)

    threads = [threading.Thread(target=run, args=(n, *call)) for n, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]


def test_the_same_refresh_token_at_two_workers_at_once_never_fails_or_revokes_the_family(
    two_workers: tuple[LiveServer, LiveServer],
) -> None:
    first, second = two_workers
    browser = Browser(first.url)
    assert browser.login(*ALICE).status_code == 302
    client = OAuthClient.register(first.url)
    on_second = OAuthClient(base_url=second.url, client_id=client.client_id, redirect_uri=client.redirect_uri)
    for _ in range(20):
        query, verifier = client.authorize(browser)
        tokens = client.exchange(query["code"], verifier).json()
        body = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        answers = at_once((client, body), (on_second, body))
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses in ([200, 200], [200, 400]), [answer.text for answer in answers]
        won = [answer.json() for answer in answers if answer.status_code == 200]
        for answer in answers:
            if answer.status_code == 400:
                assert answer.json()["error"] == "invalid_grant"
        # Within the grace period both got the same tokens; never a second family member.
        assert all(w["refresh_token"] == won[0]["refresh_token"] for w in won)
        assert token_exists(first, won[0]["access_token"])
        onward = client.refresh(won[0]["refresh_token"])
        assert onward.status_code == 200, onward.text
    browser.close()


def test_a_code_exchanged_at_two_workers_at_once_succeeds_once(
    two_workers: tuple[LiveServer, LiveServer],
) -> None:
    first, second = two_workers
    browser = Browser(first.url)
    assert browser.login(*ALICE).status_code == 302
    client = OAuthClient.register(first.url)
    on_second = OAuthClient(base_url=second.url, client_id=client.client_id, redirect_uri=client.redirect_uri)
    for _ in range(20):
        query, verifier = client.authorize(browser)
        body = {
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": client.redirect_uri,
            "code_verifier": verifier,
        }
        answers = at_once((client, body), (on_second, body))
        assert sorted(answer.status_code for answer in answers) == [200, 400], [a.text for a in answers]
        refused = next(answer for answer in answers if answer.status_code == 400)
        assert refused.json()["error"] == "invalid_grant"
        # The second use is a replay (RFC 6749 section 4.1.2): what the code minted is revoked.
        won = next(answer for answer in answers if answer.status_code == 200).json()
        assert not token_exists(first, won["access_token"])
    browser.close()


NUL_INPUTS = {
    "code": ("POST", "/token", {"data": {"grant_type": "authorization_code", "code": "a\x00"}}),
    "client_id": (
        "POST",
        "/token",
        {"data": {"grant_type": "authorization_code", "code": "c", "client_id": "x\x00"}},
    ),
    "authorize": ("GET", "/authorize", {"params": {"client_id": "x\x00", "response_type": "code"}}),
    "revoke": ("POST", "/revoke", {"data": {"token": "t", "client_id": "x\x00"}}),
    "introspect-basic": ("POST", "/introspect", {"data": {"token": "t"}, "auth": ("x\x00", "secret")}),
    "introspect-post": (
        "POST",
        "/introspect",
        {"data": {"token": "t", "client_id": "\x00", "client_secret": "s"}},
    ),
    "login-next": ("GET", "/login", {"params": {"next": "/authorize?client_id=x%00"}}),
}


@pytest.mark.parametrize("method, path, kwargs", NUL_INPUTS.values(), ids=NUL_INPUTS.keys())
def test_a_nul_character_postgresql_cannot_compare_is_a_400_not_a_500(
    two_workers: tuple[LiveServer, LiveServer], method: str, path: str, kwargs: dict[str, object]
) -> None:
    server, _other = two_workers
    data = kwargs.get("data")
    if isinstance(data, dict) and path == "/token" and "client_id" not in data:
        data["client_id"] = OAuthClient.register(server.url).client_id  # so the code itself is looked up
    response = httpx.request(method, f"{server.url}{path}", timeout=30, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 400, (kwargs, response.text)
    if path in ("/authorize", "/login"):
        assert "This request cannot be processed" in response.text
    else:
        assert response.json()["error"] == "invalid_request"
