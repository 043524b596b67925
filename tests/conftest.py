from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_github import FakeGithub
from tests.support.live import LiveServer, create_users, prepare_server
from tests.support.oauth import Browser

ALICE = ("alice", "alice-password-123")
BOB = ("bob", "bob-password-456")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One daphne worker on SQLite with users alice and bob, shared by the session's tests."""
    tmp: Path = tmp_path_factory.mktemp("live")
    server = prepare_server(tmp)
    create_users(server.env, (*ALICE, {"email": "alice@example.com"}), (*BOB, {}))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def alice_browser(server: LiveServer) -> Iterator[Browser]:
    browser = Browser(server.url)
    response = browser.login(*ALICE)
    assert response.status_code == 302, response.text
    yield browser
    browser.close()


@pytest.fixture
def bob_browser(server: LiveServer) -> Iterator[Browser]:
    browser = Browser(server.url)
    assert browser.login(*BOB).status_code == 302
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def fake_github() -> Iterator[FakeGithub]:
    """The fake GitHub on 127.0.0.1 that every GitHub test's server talks to."""
    fake = FakeGithub().start()
    yield fake
    fake.stop()
