"""The whole flow and refresh-reuse protection on a live server backed by a fresh PostgreSQL database.

Skipped locally when PostgreSQL is not reachable; under CI=true it fails instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.flows import assert_refresh_reuse_revokes_only_that_family, assert_whole_flow
from tests.support.live import ALICE, OPERATOR, LiveServer, create_users, prepare_server
from tests.support.oauth import Browser, OAuthClient, register_resource_server
from tests.support.services import fresh_postgres_database

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp: Path = tmp_path_factory.mktemp("postgres")
    with fresh_postgres_database() as database_url:
        server = prepare_server(tmp, database_url=database_url)
        assert server.env["DATABASE_URL"].startswith("postgresql://")
        create_users(server.env, (*ALICE, {}), (*OPERATOR, {"is_staff": True, "is_superuser": True}))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def pg_introspector(pg_server: LiveServer) -> Iterator[OAuthClient]:
    operator = Browser(pg_server.url)
    assert operator.login(*OPERATOR).status_code == 302
    yield register_resource_server(pg_server, operator)
    operator.close()


def test_the_whole_flow_on_postgresql(pg_server: LiveServer, pg_introspector: OAuthClient) -> None:
    assert_whole_flow(pg_server.url, *ALICE, pg_introspector)
    (engine,) = pg_server.sql("SELECT version()")[0]
    assert engine.startswith("PostgreSQL")


def test_refresh_token_reuse_revokes_only_that_family_on_postgresql(
    pg_server: LiveServer, pg_introspector: OAuthClient
) -> None:
    browser = Browser(pg_server.url)
    assert browser.login(*ALICE).status_code == 302
    assert_refresh_reuse_revokes_only_that_family(pg_server, browser, pg_introspector)
    browser.close()
