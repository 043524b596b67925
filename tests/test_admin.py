"""Operators in Django admin, driven over HTTP like a browser: what they see and what the actions do."""

from __future__ import annotations

from tests.support.live import LiveServer
from tests.support.oauth import Browser, OAuthClient, admin_action, introspect

CLIENTS = "/admin/oauthapp/application/"
USERS = "/admin/auth/user/"


def pk_of(server: LiveServer, client: OAuthClient) -> int:
    return server.sql("SELECT id FROM oauthapp_application WHERE client_id = ?", (client.client_id,))[0][0]


def user_pk(server: LiveServer, username: str) -> int:
    return server.sql("SELECT id FROM auth_user WHERE username = ?", (username,))[0][0]


def session(client: OAuthClient, browser: Browser) -> dict:
    query, verifier = client.authorize(browser)
    response = client.exchange(query["code"], verifier)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_operator_sees_clients_without_any_secret_or_token(
    server: LiveServer, alice_browser: Browser, operator_browser: Browser
) -> None:
    client = OAuthClient.register(
        server.url, client_name="Secretive client", token_endpoint_auth_method="client_secret_basic"
    )
    tokens = session(client, alice_browser)
    (stored_secret,) = server.sql(
        "SELECT client_secret FROM oauthapp_application WHERE client_id = ?", (client.client_id,)
    )[0]
    secrets_ = [client.client_secret, stored_secret, tokens["access_token"], tokens["refresh_token"]]

    listing = operator_browser.http.get(CLIENTS)
    assert listing.status_code == 200
    assert "Secretive client" in listing.text and client.client_id in listing.text
    detail = operator_browser.http.get(f"{CLIENTS}{pk_of(server, client)}/change/")
    assert detail.status_code == 200
    assert client.client_id in detail.text
    for page in (
        listing,
        detail,
        operator_browser.http.get("/admin/oauth2_provider/accesstoken/"),
        operator_browser.http.get("/admin/oauth2_provider/refreshtoken/"),
    ):
        assert page.status_code == 200
        for value in secrets_:
            assert value and value not in page.text


def test_it_keeps_non_staff_users_out_of_admin(server: LiveServer, alice_browser: Browser) -> None:
    response = alice_browser.http.get(CLIENTS)
    assert response.status_code == 302
    assert response.headers["location"].startswith("/admin/login/")


def test_the_admin_action_revokes_the_tokens_of_one_user_only(
    server: LiveServer,
    alice_browser: Browser,
    bob_browser: Browser,
    operator_browser: Browser,
    introspector: OAuthClient,
) -> None:
    client = OAuthClient.register(server.url)
    alices, bobs = session(client, alice_browser), session(client, bob_browser)

    admin_action(operator_browser, USERS, "revoke_user_tokens", user_pk(server, "bob"))

    assert introspect(introspector, bobs["access_token"]) == {"active": False}
    assert client.refresh(bobs["refresh_token"]).json()["error"] == "invalid_grant"
    assert introspect(introspector, alices["access_token"])["active"] is True
    assert client.refresh(alices["refresh_token"]).status_code == 200


def test_the_admin_action_revokes_the_tokens_of_one_client_only(
    server: LiveServer, alice_browser: Browser, operator_browser: Browser, introspector: OAuthClient
) -> None:
    target, bystander = OAuthClient.register(server.url), OAuthClient.register(server.url)
    hit, spared = session(target, alice_browser), session(bystander, alice_browser)

    admin_action(operator_browser, CLIENTS, "revoke_client_tokens", pk_of(server, target))

    assert introspect(introspector, hit["access_token"]) == {"active": False}
    assert target.refresh(hit["refresh_token"]).json()["error"] == "invalid_grant"
    assert introspect(introspector, spared["access_token"])["active"] is True
    # Revoking tokens does not disable the client: it can start over.
    assert session(target, alice_browser)["access_token"]


def test_the_admin_action_disables_a_client_and_enable_brings_it_back(
    server: LiveServer, alice_browser: Browser, operator_browser: Browser, introspector: OAuthClient
) -> None:
    client = OAuthClient.register(server.url)
    tokens = session(client, alice_browser)

    admin_action(operator_browser, CLIENTS, "disable_clients", pk_of(server, client))
    assert introspect(introspector, tokens["access_token"]) == {"active": False}
    assert client.refresh(tokens["refresh_token"]).status_code == 401

    admin_action(operator_browser, CLIENTS, "enable_clients", pk_of(server, client))
    assert server.sql(
        "SELECT disabled_at FROM oauthapp_application WHERE client_id = ?", (client.client_id,)
    ) == [(None,)]
    assert session(client, alice_browser)["access_token"]
