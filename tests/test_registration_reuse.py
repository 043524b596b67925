"""Repeated dynamic registrations: an exact repeat of a recent public client gets that client back.

`reusing` has the default one-day REGISTRATION_REUSE_WINDOW (the other live servers turn it off,
so that each test's registration is a client of its own), trusts X-Forwarded-For so each test
speaks from addresses of its own, and allows three new registrations per address.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.live import ALICE, LiveServer, create_users, prepare_server
from tests.support.oauth import Browser, OAuthClient

_addresses = (f"198.51.100.{n}" for n in itertools.count(1))


@pytest.fixture(scope="module")
def reusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = prepare_server(
        tmp_path_factory.mktemp("reuse"),
        REGISTRATION_REUSE_WINDOW="86400",
        REGISTRATION_RATE_LIMIT="3",
        BEHIND_PROXY="true",
    )
    create_users(server.env, (*ALICE, {}))
    server.start()
    yield server
    server.stop()
    assert "Traceback" not in server.log_path.read_text(errors="replace")


@pytest.fixture
def address() -> str:
    return next(_addresses)


def metadata(**fields: Any) -> dict[str, Any]:
    return {
        "client_name": f"reuse-{secrets.token_hex(4)}",
        "redirect_uris": ["http://localhost:3335/oauth/callback"],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "client_uri": "https://client.example/",
        **fields,
    }


def register(url: str, body: dict[str, Any], address: str) -> httpx.Response:
    return httpx.post(f"{url}/register", json=body, headers={"X-Forwarded-For": address}, timeout=30)


def rows_named(server: LiveServer, name: str) -> int:
    return server.sql("SELECT COUNT(*) FROM oauthapp_application WHERE name = ?", (name,))[0][0]


def test_an_exact_repeat_gets_the_same_client_back(reusing: LiveServer, address: str) -> None:
    body = metadata()
    first = register(reusing.url, body, address)
    second = register(reusing.url, body, address)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()  # same client_id, same issued-at, same metadata echoed
    assert rows_named(reusing, body["client_name"]) == 1
    # The handed-back client works.
    client = OAuthClient(
        base_url=reusing.url, client_id=second.json()["client_id"], redirect_uri=body["redirect_uris"][0]
    )
    browser = Browser(reusing.url)
    assert browser.login(*ALICE).status_code == 302
    query, verifier = client.authorize(browser)
    assert client.exchange(query["code"], verifier).status_code == 200
    browser.close()


DIFFERENT = {
    # mcp-remote registers again on every new callback port: a client of its own each time.
    "callback-port": {"redirect_uris": ["http://localhost:3336/oauth/callback"]},
    "redirect-order": {
        "redirect_uris": ["http://localhost:3335/oauth/callback", "http://127.0.0.1:3335/oauth/callback"]
    },
    "grant-types": {"grant_types": ["authorization_code"]},
    "client-uri": {"client_uri": "https://other.example/"},
    "software-version": {"software_version": "2.0"},
}


@pytest.mark.parametrize("change", DIFFERENT.values(), ids=DIFFERENT.keys())
def test_different_metadata_gets_a_client_of_its_own(
    reusing: LiveServer, change: dict[str, Any], address: str
) -> None:
    body = metadata()
    first = register(reusing.url, body, address).json()
    other = register(reusing.url, {**body, **change}, address)
    assert other.status_code == 201
    assert other.json()["client_id"] != first["client_id"]
    assert rows_named(reusing, body["client_name"]) == 2


def test_a_different_name_gets_a_client_of_its_own(reusing: LiveServer, address: str) -> None:
    body = metadata()
    first = register(reusing.url, body, address).json()
    renamed = register(reusing.url, {**body, "client_name": body["client_name"] + "-2"}, address).json()
    assert renamed["client_id"] != first["client_id"]


def test_a_confidential_client_is_never_handed_back(reusing: LiveServer, address: str) -> None:
    body = metadata(token_endpoint_auth_method="client_secret_basic")
    first = register(reusing.url, body, address).json()
    second = register(reusing.url, body, address).json()
    # Its secret is stored hashed and cannot be given out again: always a new client.
    assert second["client_id"] != first["client_id"]
    assert second["client_secret"] and second["client_secret"] != first["client_secret"]
    assert rows_named(reusing, body["client_name"]) == 2


def test_a_repeat_after_the_window_or_of_a_disabled_client_is_a_new_client(
    reusing: LiveServer, address: str
) -> None:
    body = metadata()
    first = register(reusing.url, body, address).json()["client_id"]
    reusing.sql(
        "UPDATE oauthapp_application SET created = datetime('now', '-2 days') WHERE client_id = ?", (first,)
    )
    second = register(reusing.url, body, address).json()["client_id"]
    assert second != first
    reusing.sql(
        "UPDATE oauthapp_application SET disabled_at = datetime('now') WHERE client_id = ?", (second,)
    )
    third = register(reusing.url, body, address).json()["client_id"]
    assert third not in {first, second}
    assert rows_named(reusing, body["client_name"]) == 3


def test_repeats_do_not_count_against_the_registration_limit(reusing: LiveServer, address: str) -> None:
    body = metadata()
    client_id = register(reusing.url, body, address).json()["client_id"]  # 1 of 3
    for _ in range(5):
        again = register(reusing.url, body, address)
        assert again.status_code == 201 and again.json()["client_id"] == client_id
    assert register(reusing.url, metadata(), address).status_code == 201  # 2 of 3
    assert register(reusing.url, metadata(), address).status_code == 201  # 3 of 3
    refused = register(reusing.url, metadata(), address)
    assert refused.status_code == 429
    assert refused.json()["error"] == "invalid_request"
    # Over the limit, the repeat still gets its client back: nothing new is created.
    still = register(reusing.url, body, address)
    assert still.status_code == 201 and still.json()["client_id"] == client_id
    assert rows_named(reusing, body["client_name"]) == 1


def test_the_same_metadata_from_another_address_is_another_client(reusing: LiveServer) -> None:
    body = metadata()
    first = register(reusing.url, body, next(_addresses)).json()["client_id"]
    second = register(reusing.url, body, next(_addresses)).json()["client_id"]
    assert first != second
