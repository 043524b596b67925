"""The registration limit on a development server (loopback PUBLIC_URL): the developer's own
loopback tools get REGISTRATION_LOOPBACK_RATE_LIMIT, every other address keeps
REGISTRATION_RATE_LIMIT. A public server limits loopback callers too
(tests/test_oauth_refusals.py: test_it_limits_registrations_per_client_address)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.live import LiveServer, prepare_server
from tests.support.oauth import CALLBACK

BODY = {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}


@pytest.fixture(scope="module")
def development(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # BEHIND_PROXY: X-Forwarded-For stands for callers from other addresses.
    server = prepare_server(
        tmp_path_factory.mktemp("dev"),
        REGISTRATION_RATE_LIMIT="2",
        REGISTRATION_LOOPBACK_RATE_LIMIT="5",
        BEHIND_PROXY="true",
    ).start()
    yield server
    server.stop()


def register(server: LiveServer, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return httpx.post(f"{server.url}/register", json=BODY, headers=headers, timeout=30)


def registered_from(server: LiveServer, address: str) -> int:
    return server.sql("SELECT COUNT(*) FROM oauthapp_application WHERE registered_from = ?", (address,))[0][0]


def test_loopback_callers_of_a_development_server_get_the_loopback_limit(development: LiveServer) -> None:
    for _ in range(5):
        assert register(development).status_code == 201
    refused = register(development)
    assert refused.status_code == 429
    assert refused.json()["error"] == "invalid_request"
    assert registered_from(development, "127.0.0.1") == 5


@pytest.mark.parametrize("address", ["203.0.113.7", "10.1.2.3"])
def test_other_addresses_keep_the_registration_limit_on_a_development_server(
    development: LiveServer, address: str
) -> None:
    for _ in range(2):
        assert register(development, forwarded_for=address).status_code == 201
    refused = register(development, forwarded_for=address)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "3600"
    assert registered_from(development, address) == 2


def test_loopback_callers_of_a_public_server_keep_the_registration_limit(tmp_path: Path) -> None:
    public = prepare_server(
        tmp_path,
        REGISTRATION_RATE_LIMIT="2",
        REGISTRATION_LOOPBACK_RATE_LIMIT="5",
        PUBLIC_URL="https://mcp.example.test",
    ).start()
    try:
        for _ in range(2):
            assert register(public).status_code == 201
        assert register(public).status_code == 429
    finally:
        public.stop()
