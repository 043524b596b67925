from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import logcheck
from tests.support.fake_github import FakeGithub
from tests.support.live import ALICE, BOB, OPERATOR, LiveServer, create_users, prepare_server
from tests.support.oauth import Browser, OAuthClient, register_resource_server


@pytest.fixture(autouse=True)
def _live_server_logs_stay_clean() -> Iterator[None]:
    """Fail a test whose live servers logged a traceback or ERROR it did not expect."""
    logcheck.before_test()
    yield
    logcheck.after_test()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One daphne worker on SQLite with alice, bob and a superuser operator, shared by all tests."""
    tmp: Path = tmp_path_factory.mktemp("live")
    server = prepare_server(tmp)
    create_users(
        server.env,
        (*ALICE, {"email": "alice@example.com"}),
        (*BOB, {}),
        (*OPERATOR, {"is_staff": True, "is_superuser": True}),
    )
    server.start()
    yield server
    server.stop()


# Logged-in browsers are shared: a login costs a PBKDF2 hash, and no test logs them out.
def logged_in(server: LiveServer, credentials: tuple[str, str]) -> Iterator[Browser]:
    browser = Browser(server.url)
    response = browser.login(*credentials)
    assert response.status_code == 302, response.text
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def alice_browser(server: LiveServer) -> Iterator[Browser]:
    yield from logged_in(server, ALICE)


@pytest.fixture(scope="session")
def bob_browser(server: LiveServer) -> Iterator[Browser]:
    yield from logged_in(server, BOB)


@pytest.fixture(scope="session")
def fake_github() -> Iterator[FakeGithub]:
    """The fake GitHub on 127.0.0.1 that every GitHub test's server talks to."""
    fake = FakeGithub().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def operator_browser(server: LiveServer) -> Iterator[Browser]:
    yield from logged_in(server, OPERATOR)


@pytest.fixture(scope="session")
def introspector(server: LiveServer, operator_browser: Browser) -> OAuthClient:
    """A resource server that introspects tokens: a confidential client the operator marked in admin."""
    return register_resource_server(server, operator_browser)
