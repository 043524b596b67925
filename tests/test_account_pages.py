"""The pages a person sees: login, consent memory, connected apps. Over HTTP on the live server."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.support.live import ALICE, LiveServer
from tests.support.oauth import Browser, OAuthClient, csrf_from, introspect, pkce_pair


def test_login_keeps_next_and_lands_there(server: LiveServer) -> None:
    browser = Browser(server.url)
    response = browser.login(*ALICE, next_url="/account/apps")
    assert response.status_code == 302
    assert response.headers["location"] == "/account/apps"
    assert browser.http.get("/account/apps").status_code == 200
    browser.close()


@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "https:evil.example",
        "javascript:alert(1)",
    ],
)
def test_login_never_redirects_off_site(server: LiveServer, next_url: str) -> None:
    browser = Browser(server.url)
    response = browser.login(*ALICE, next_url=next_url)
    assert response.status_code == 302
    assert response.headers["location"] == "/"
    browser.close()


def test_it_rejects_a_wrong_password_without_logging_in(server: LiveServer) -> None:
    browser = Browser(server.url)
    response = browser.login("alice", "not-her-password", next_url="/account/apps")
    assert response.status_code == 200
    assert "didn&#x27;t match" in response.text or "didn't match" in response.text
    assert browser.http.get("/account/apps").status_code == 302
    browser.close()


def test_connected_apps_needs_a_login(server: LiveServer) -> None:
    response = Browser(server.url).http.get("/account/apps")
    assert response.status_code == 302
    assert response.headers["location"].startswith("/login?next=/account/apps")


def test_consent_is_remembered_listed_and_revoking_it_kills_tokens_and_asks_again(
    server: LiveServer, alice_browser: Browser, introspector: OAuthClient
) -> None:
    client = OAuthClient.register(server.url, client_name="Remembered client")
    query, verifier = client.authorize(alice_browser)
    tokens = client.exchange(query["code"], verifier).json()

    # Same scope: no page, straight back with a code.
    again = alice_browser.http.get("/authorize", params=client.authorize_params(pkce_pair()[1]))
    assert again.status_code == 302
    assert again.headers["location"].startswith(client.redirect_uri) and "code=" in again.headers["location"]

    page = alice_browser.http.get("/account/apps")
    assert page.status_code == 200
    assert "Remembered client" in page.text and client.client_id in page.text
    assert introspect(introspector, tokens["access_token"])["active"] is True

    revoked = alice_browser.http.post(
        f"/account/apps/{client.client_id}/revoke", data={"csrfmiddlewaretoken": csrf_from(page.text)}
    )
    assert revoked.status_code == 302 and revoked.headers["location"] == "/account/apps"

    assert introspect(introspector, tokens["access_token"]) == {"active": False}
    assert client.refresh(tokens["refresh_token"]).status_code == 400
    assert server.sql(
        "SELECT COUNT(*) FROM oauthapp_consent c JOIN oauthapp_application a ON a.id = c.application_id "
        "WHERE a.client_id = ?",
        (client.client_id,),
    ) == [(0,)]
    listing = alice_browser.http.get("/account/apps").text
    assert "Remembered client can no longer use your account." in listing
    assert client.client_id not in listing
    asked = alice_browser.http.get("/authorize", params=client.authorize_params(pkce_pair()[1]))
    assert asked.status_code == 200
    assert "Authorize Remembered client?" in asked.text


def test_it_refuses_to_revoke_a_connected_app_without_csrf_or_by_get(
    server: LiveServer, alice_browser: Browser, introspector: OAuthClient
) -> None:
    client = OAuthClient.register(server.url)
    query, verifier = client.authorize(alice_browser)
    tokens = client.exchange(query["code"], verifier).json()
    assert alice_browser.http.get(f"/account/apps/{client.client_id}/revoke").status_code == 405
    assert alice_browser.http.post(f"/account/apps/{client.client_id}/revoke").status_code == 403
    assert introspect(introspector, tokens["access_token"])["active"] is True


def test_revoking_an_unknown_app_is_a_404(server: LiveServer, alice_browser: Browser) -> None:
    page = alice_browser.http.get("/account/apps")
    response = alice_browser.http.post(
        "/account/apps/no-such-client/revoke", data={"csrfmiddlewaretoken": csrf_from(page.text)}
    )
    assert response.status_code == 404


def test_the_consent_page_lists_the_tools_the_client_could_call(
    server: LiveServer, alice_browser: Browser
) -> None:
    client = OAuthClient.register(server.url, client_name="Tool-curious client")
    page = alice_browser.http.get("/authorize", params=client.authorize_params(pkce_pair()[1]))
    assert page.status_code == 200
    tools = page.text[page.text.index('id="consent-tools"') :]
    tools = tools[: tools.index("</ul>")]
    assert "Add two numbers" in tools and "only reads" in tools
    assert "Your GitHub profile" in tools
    # A permission-gated tool alice does not hold is not offered.
    assert "Server statistics" not in tools
    assert '/static/mcpapp/icon.svg"' in page.text
    # A tool with an icon shows it beside its title; one without shows none.
    items = {re.sub(r"<[^>]+>", "", item).split("(")[0].strip(): item for item in tools.split("<li>")[1:]}
    icon = f"{server.url}/static/mcpapp/tool-github.svg"
    assert f'<img src="{icon}" alt="" width="16" height="16">' in items["Your GitHub profile"]
    assert "<img" not in items["Add two numbers"]
    served = httpx.get(icon, timeout=10)
    assert served.status_code == 200 and served.headers["content-type"].startswith("image/svg")
