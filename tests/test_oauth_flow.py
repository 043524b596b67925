"""The whole authorization-server flow over real HTTP against a running daphne."""

from __future__ import annotations

import httpx

from tests.support.flows import assert_refresh_reuse_revokes_only_that_family, assert_whole_flow
from tests.support.live import ALICE, LiveServer
from tests.support.oauth import Browser, OAuthClient


def test_metadata_names_this_server_exactly(server: LiveServer) -> None:
    meta = httpx.get(f"{server.url}/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == server.url
    assert meta["authorization_endpoint"] == f"{server.url}/authorize"
    assert meta["token_endpoint"] == f"{server.url}/token"
    assert meta["registration_endpoint"] == f"{server.url}/register"
    assert meta["revocation_endpoint"] == f"{server.url}/revoke"
    assert meta["introspection_endpoint"] == f"{server.url}/introspect"
    assert meta["response_types_supported"] == ["code"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "none" in meta["token_endpoint_auth_methods_supported"]
    assert set(meta["grant_types_supported"]) == {"authorization_code", "refresh_token"}
    assert meta["scopes_supported"] == ["mcp"]


def test_protected_resource_metadata_for_each_transport(server: LiveServer) -> None:
    for suffix in ("", "/mcp", "/sse"):
        response = httpx.get(f"{server.url}/.well-known/oauth-protected-resource{suffix}")
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        body = response.json()
        assert body["resource"] == f"{server.url}{suffix}"
        assert body["authorization_servers"] == [server.url]
        assert body["scopes_supported"] == ["mcp"]  # the minimal scopes an MCP client needs
    assert httpx.get(f"{server.url}/.well-known/oauth-protected-resource/other").status_code == 404


def test_metadata_ignores_a_forged_host_header(server: LiveServer) -> None:
    response = httpx.get(
        f"{server.url}/.well-known/oauth-authorization-server", headers={"Host": "localhost"}
    )
    assert response.json()["issuer"] == server.url


def test_the_whole_flow_register_login_consent_token_refresh_revoke_introspect(
    server: LiveServer, introspector: OAuthClient
) -> None:
    assert_whole_flow(server.url, *ALICE, introspector)


def test_refresh_token_reuse_revokes_that_family_and_only_it(
    server: LiveServer, alice_browser: Browser, introspector: OAuthClient
) -> None:
    assert_refresh_reuse_revokes_only_that_family(server, alice_browser, introspector)


def test_no_token_or_secret_is_stored_in_plaintext(server: LiveServer, alice_browser: Browser) -> None:
    url = server.url
    confidential = OAuthClient.register(url, token_endpoint_auth_method="client_secret_post")
    query, verifier = confidential.authorize(alice_browser)
    body = confidential.exchange(query["code"], verifier).json()
    access, refresh, secret = body["access_token"], body["refresh_token"], confidential.client_secret
    assert access and refresh and secret

    dump = "\n".join(
        repr(row)
        for table in (
            "oauth2_provider_accesstoken",
            "oauth2_provider_refreshtoken",
            "oauth2_provider_grant",
            "oauthapp_application",
        )
        for row in server.sql(f"SELECT * FROM {table}")
    )
    assert access not in dump
    assert refresh not in dump
    assert secret not in dump
    stored_secret = server.sql(
        "SELECT client_secret FROM oauthapp_application WHERE client_id = ?", (confidential.client_id,)
    )[0][0]
    assert stored_secret.startswith("client_secret_sha256$")
