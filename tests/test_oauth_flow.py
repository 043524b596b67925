"""The whole authorization-server flow over real HTTP against a running daphne."""

from __future__ import annotations

import httpx

from tests.support.live import LiveServer
from tests.support.oauth import Browser, OAuthClient, hidden_fields, pkce_pair, query_of


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
    assert httpx.get(f"{server.url}/.well-known/oauth-protected-resource/other").status_code == 404


def test_metadata_ignores_a_forged_host_header(server: LiveServer) -> None:
    response = httpx.get(
        f"{server.url}/.well-known/oauth-authorization-server", headers={"Host": "localhost"}
    )
    assert response.json()["issuer"] == server.url


def test_the_whole_flow_register_login_consent_token_refresh_revoke_introspect(
    server: LiveServer,
) -> None:
    url = server.url
    # An MCP client registers itself and sends the user to /authorize; the user is not logged in.
    client = OAuthClient.register(url)
    browser = Browser(url)
    verifier, challenge = pkce_pair()
    params = client.authorize_params(challenge, resource=f"{url}/mcp")
    first = browser.http.get("/authorize", params=params)
    assert first.status_code == 302 and first.headers["location"].startswith("/login?next=")
    # The login form keeps `next` and lands back on the pending authorization request.
    login = browser.login("alice", "alice-password-123", next_url=query_of(first.headers["location"])["next"])
    assert login.status_code == 302
    assert login.headers["location"].startswith("/authorize?")
    consent = browser.http.get(login.headers["location"])
    assert consent.status_code == 200
    assert "Authorize Test MCP client?" in consent.text
    assert "localhost:33418" in consent.text
    assert consent.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in consent.headers["content-security-policy"]
    form = hidden_fields(consent.text)
    form["allow"] = "Authorize"
    approved = browser.http.post(f"/authorize?{httpx.QueryParams(params)}", data=form)
    assert approved.status_code == 302
    callback = query_of(approved.headers["location"])
    assert approved.headers["location"].startswith(client.redirect_uri)
    assert callback["state"] == params["state"]
    assert callback["iss"] == url

    token = client.exchange(callback["code"], verifier)
    assert token.status_code == 200, token.text
    assert token.headers["cache-control"] == "no-store"
    body = token.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "mcp"
    assert 3500 <= body["expires_in"] <= 3600
    assert body["refresh_token"]

    # Refresh rotates the refresh token.
    refreshed = client.refresh(body["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert new["access_token"] != body["access_token"]
    assert new["refresh_token"] != body["refresh_token"]

    # Introspection (by a confidential client) sees the new token, bound to /mcp.
    resource_server = OAuthClient.register(url, token_endpoint_auth_method="client_secret_basic")
    assert resource_server.client_secret
    seen = httpx.post(
        f"{url}/introspect",
        data={"token": new["access_token"]},
        auth=(resource_server.client_id, resource_server.client_secret),
    )
    assert seen.status_code == 200, seen.text
    assert seen.json()["active"] is True
    assert seen.json()["username"] == "alice"
    assert seen.json()["aud"] == [f"{url}/mcp"]

    # Revocation (RFC 7009) kills the access token at once.
    revoked = httpx.post(f"{url}/revoke", data={"token": new["access_token"], "client_id": client.client_id})
    assert revoked.status_code == 200
    gone = httpx.post(
        f"{url}/introspect",
        data={"token": new["access_token"]},
        auth=(resource_server.client_id, resource_server.client_secret),
    )
    assert gone.json() == {"active": False}

    # The consent is remembered: asking again for the same scope skips the page.
    again = browser.http.get("/authorize", params=client.authorize_params(pkce_pair()[1]))
    assert again.status_code == 302
    assert "code=" in again.headers["location"]
    browser.close()


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
