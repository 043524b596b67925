"""Whole scenarios shared by the SQLite and PostgreSQL runs; each asserts as it goes."""

from __future__ import annotations

import httpx

from tests.support.live import LiveServer
from tests.support.oauth import Browser, OAuthClient, hidden_fields, introspect, pkce_pair, query_of


def assert_whole_flow(url: str, username: str, password: str, introspector: OAuthClient) -> None:
    """Register, log in, consent, exchange, refresh, introspect, revoke, consent memory.

    `introspector` is an operator-marked resource server (register_resource_server).
    """
    # An MCP client registers itself and sends the user to /authorize; the user is not logged in.
    client = OAuthClient.register(url)
    browser = Browser(url)
    verifier, challenge = pkce_pair()
    params = client.authorize_params(challenge, resource=f"{url}/mcp")
    first = browser.http.get("/authorize", params=params)
    assert first.status_code == 302 and first.headers["location"].startswith("/login?next=")
    # The login form keeps `next` and lands back on the pending authorization request.
    login = browser.login(username, password, next_url=query_of(first.headers["location"])["next"])
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

    # Introspection (by the resource server) sees the new token, bound to /mcp.
    resource_server = introspector
    seen = introspect(resource_server, new["access_token"])
    assert seen["active"] is True
    assert seen["username"] == username
    assert seen["aud"] == [f"{url}/mcp"]

    # Revocation (RFC 7009) kills the access token at once.
    revoked = httpx.post(f"{url}/revoke", data={"token": new["access_token"], "client_id": client.client_id})
    assert revoked.status_code == 200
    assert introspect(resource_server, new["access_token"]) == {"active": False}

    # The consent is remembered: asking again for the same scope skips the page.
    again = browser.http.get("/authorize", params=client.authorize_params(pkce_pair()[1]))
    assert again.status_code == 302
    assert "code=" in again.headers["location"]
    browser.close()


def expire_refresh_grace(server: LiveServer, client: OAuthClient) -> None:
    """Age every rotated refresh token of `client` past REFRESH_TOKEN_GRACE_SECONDS."""
    server.sql(
        "UPDATE oauth2_provider_refreshtoken SET revoked = '2000-01-01 00:00:00' WHERE revoked IS NOT NULL "
        "AND application_id = (SELECT id FROM oauthapp_application WHERE client_id = ?)",
        (client.client_id,),
    )


def assert_refresh_reuse_revokes_only_that_family(
    server: LiveServer, browser: Browser, introspector: OAuthClient
) -> None:
    """Replaying a rotated refresh token after the grace period kills its own family, not the
    user's other session.

    `browser` is logged in; `introspector` is an operator-marked resource server.
    """
    url = server.url
    client = OAuthClient.register(url)
    # Two sessions of the same user and client, from two separate authorizations.
    query, verifier = client.authorize(browser)
    first = client.exchange(query["code"], verifier).json()
    query, verifier = client.authorize(browser)
    second = client.exchange(query["code"], verifier).json()
    assert first["refresh_token"] != second["refresh_token"]

    rotated = client.refresh(first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    current = rotated.json()

    expire_refresh_grace(server, client)
    replay = client.refresh(first["refresh_token"])
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"

    # The whole first family is dead: the rotated successor and its access token.
    assert introspect(introspector, current["access_token"]) == {"active": False}
    successor = client.refresh(current["refresh_token"])
    assert successor.status_code == 400
    assert successor.json()["error"] == "invalid_grant"

    # The second session is untouched.
    assert introspect(introspector, second["access_token"])["active"] is True
    still = client.refresh(second["refresh_token"])
    assert still.status_code == 200, still.text
    assert introspect(introspector, still.json()["access_token"])["active"] is True
