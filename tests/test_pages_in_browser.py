"""The pages a person sees, in a real headless browser (tests/support/browser.py), at desktop width
and at 375 px: no horizontal scroll, the content the person needs, screenshots kept as artifacts
in test-artifacts/screenshots/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from playwright.sync_api import Page, Playwright, Route, sync_playwright

from tests.support.browser import (
    VIEWPORTS,
    assert_no_horizontal_scroll,
    chromium_page,
    require_chromium,
    screenshot,
    text_lines,
)
from tests.support.live import ALICE, OPERATOR, LiveServer
from tests.support.oauth import CALLBACK, OAuthClient, pkce_pair

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    require_chromium()
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(params=["desktop", "phone"])
def viewport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def page(playwright: Playwright, viewport: str, tmp_path: Path) -> Iterator[Page]:
    with chromium_page(playwright, viewport=viewport, profile=tmp_path / "profile") as page:
        # The MCP client's loopback callback: nothing listens there, the client would.
        page.route(f"{CALLBACK.rsplit('/oauth', 1)[0]}/**", answer_as_the_client)
        yield page


def answer_as_the_client(route: Route) -> None:
    route.fulfill(status=200, content_type="text/html", body="<p>The MCP client got its answer.</p>")


def log_in(page: Page, server: LiveServer, username: str, password: str) -> None:
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_load_state()


def start_authorization(page: Page, server: LiveServer, client: OAuthClient) -> dict[str, str]:
    params = client.authorize_params(pkce_pair()[1])
    page.goto(f"{server.url}/authorize?{urlencode(params)}")
    return params


def callback_query(page: Page) -> dict[str, str]:
    assert page.url.startswith(CALLBACK), page.url
    return {key: values[0] for key, values in parse_qs(urlsplit(page.url).query).items()}


def consent_count(server: LiveServer, client: OAuthClient) -> int:
    return server.sql(
        "SELECT COUNT(*) FROM oauthapp_consent c JOIN oauthapp_application a ON a.id = c.application_id "
        "WHERE a.client_id = ?",
        (client.client_id,),
    )[0][0]


def test_the_home_page_fits_and_recommends_the_mcp_endpoint(
    page: Page, server: LiveServer, viewport: str
) -> None:
    page.goto(f"{server.url}/")
    assert page.inner_text("h1") == "Django MCP server"
    assert f'"{server.url}/mcp"' in page.inner_text("#claude-config")
    assert page.inner_text("#mcp-url") == f"{server.url}/mcp"
    assert page.is_visible("header >> text=Log in")
    assert_no_horizontal_scroll(page, "home")
    screenshot(page, "home", viewport)


def test_a_wrong_password_keeps_the_username_then_login_leads_to_consent_and_deny_tells_the_client(
    page: Page, server: LiveServer, viewport: str
) -> None:
    client = OAuthClient.register(server.url, client_name="Browser client")
    params = start_authorization(page, server, client)
    assert urlsplit(page.url).path == "/login"
    assert "to continue to Browser client" in page.inner_text("main")

    log_in(page, server, ALICE[0], "not-her-password")
    assert "didn't match" in page.inner_text(".error")
    assert page.input_value("#id_username") == ALICE[0]
    assert page.evaluate("document.activeElement.id") == "id_password"
    assert_no_horizontal_scroll(page, "login after a wrong password")
    screenshot(page, "login-wrong-password", viewport)

    page.fill("#id_password", ALICE[1])
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_selector("#authorizationForm")
    assert page.inner_text("h1") == "Authorize Browser client?"
    assert "localhost:33418" in page.inner_text("main")
    assert page.is_visible("button:has-text('Approve')") and page.is_visible("button:has-text('Deny')")
    assert_no_horizontal_scroll(page, "consent")
    screenshot(page, "consent", viewport)

    page.click("button:has-text('Deny')")
    page.wait_for_url(f"{CALLBACK}?*")
    answer = callback_query(page)
    assert answer["error"] == "access_denied"
    assert answer["state"] == params["state"]
    assert answer["iss"] == server.url
    assert "code" not in answer
    assert consent_count(server, client) == 0


def test_approving_lists_the_app_and_revoking_it_on_connected_apps(
    page: Page, server: LiveServer, viewport: str
) -> None:
    client = OAuthClient.register(server.url, client_name="Revocable client")
    start_authorization(page, server, client)
    log_in(page, server, *ALICE)
    page.click("button:has-text('Approve')")
    page.wait_for_url(f"{CALLBACK}?*")
    assert callback_query(page)["code"]
    assert consent_count(server, client) == 1

    page.goto(f"{server.url}/account/apps")
    row = page.locator("#connected-apps tr", has_text=client.client_id)
    assert "Revocable client" in row.inner_text()
    revoke = row.locator("button:has-text('Revoke')")
    box = revoke.bounding_box()
    assert box is not None and box["x"] + box["width"] <= VIEWPORTS[viewport]["width"]
    # The header keeps "Log out alice" on one line (it wrapped into "Log / out / alice").
    assert text_lines(page, "#header-logout") == 1
    assert_no_horizontal_scroll(page, "connected apps")
    screenshot(page, "connected-apps", viewport)

    revoke.click()
    page.wait_for_load_state()
    assert "Revocable client can no longer use your account." in page.inner_text("main")
    assert client.client_id not in page.inner_text("main")
    assert consent_count(server, client) == 0
    assert_no_horizontal_scroll(page, "connected apps after revoking")
    screenshot(page, "connected-apps-revoked", viewport)


def test_error_pages_say_what_happened_and_what_to_do(page: Page, server: LiveServer, viewport: str) -> None:
    stale = {"response_type": "code", "client_id": "a-client-from-another-server", "redirect_uri": CALLBACK}
    response = page.goto(f"{server.url}/authorize?{urlencode(stale)}")
    assert response is not None and response.status == 400
    assert page.inner_text("h1") == "This authorization request cannot continue"
    assert "Invalid client_id" in page.inner_text("#oauth-error")
    assert "rm -rf ~/.mcp-auth" in page.inner_text("main")
    assert page.is_visible("#stale-registration-hint")
    assert_no_horizontal_scroll(page, "authorize error")
    screenshot(page, "authorize-invalid-client", viewport)

    # A redirect URI the client never registered: the same stale registration, the same advice.
    client = OAuthClient.register(server.url)
    moved = {"response_type": "code", "client_id": client.client_id, "redirect_uri": "http://localhost:1/cb"}
    page.goto(f"{server.url}/authorize?{urlencode(moved)}")
    assert "Mismatching redirect URI" in page.inner_text("#oauth-error")
    assert page.is_visible("#stale-registration-hint")

    # A request that is bad for another reason gets no ~/.mcp-auth advice.
    page.goto(f"{server.url}/authorize?response_type=code")
    assert "Missing client_id" in page.inner_text("#oauth-error")
    assert page.locator("#stale-registration-hint").count() == 0

    response = page.goto(f"{server.url}/no-such-page")
    assert response is not None and response.status == 404
    assert page.inner_text("h1") == "Page not found"
    assert_no_horizontal_scroll(page, "404")
    screenshot(page, "not-found", viewport)


def test_logout_typed_in_the_address_bar_offers_a_log_out_button(
    page: Page, server: LiveServer, viewport: str
) -> None:
    page.goto(f"{server.url}/logout")
    assert page.inner_text("h1") == "You are not logged in"

    page.goto(f"{server.url}/login")
    log_in(page, server, *ALICE)
    response = page.goto(f"{server.url}/logout")
    assert response is not None and response.status == 200
    assert page.inner_text("h1") == "Log out?"
    assert_no_horizontal_scroll(page, "logout")
    screenshot(page, "logout", viewport)

    page.click("#logout-button")
    page.wait_for_load_state()
    assert urlsplit(page.url).path == "/"
    assert page.is_visible("header >> text=Log in")
    page.goto(f"{server.url}/account/apps")
    assert urlsplit(page.url).path == "/login"


def test_the_admin_client_list_reads_as_this_server(page: Page, server: LiveServer, viewport: str) -> None:
    client = OAuthClient.register(server.url, client_name="Listed client")
    page.goto(f"{server.url}/admin/oauthapp/application/")
    page.fill("#id_username", OPERATOR[0])
    page.fill("#id_password", OPERATOR[1])
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")

    assert page.inner_text("#site-name") == "Django MCP server"
    assert page.title() == "Select OAuth client to change | Django MCP server admin"
    assert "Django administration" not in page.content()
    row = page.locator("#result_list tr", has_text=client.client_id)
    assert "Listed client" in row.inner_text() and CALLBACK in row.inner_text()
    headers = page.inner_text("#result_list thead")
    for column in ("REGISTRATION SOURCE", "REDIRECT URIS", "LAST USED AT", "ENABLED", "ASKS CONSENT"):
        assert column in headers.upper()
    assert_no_horizontal_scroll(page, "admin client list")
    screenshot(page, "admin-clients", viewport)

    row.locator("th a").click()
    page.wait_for_selector("#application_form")
    form = page.inner_text("#application_form")
    for gone in ("Algorithm", "No OIDC support", "Client secret", "Hash client secret", "Post logout"):
        assert gone not in form
    assert page.locator("text=View on site").count() == 0
    page.click("details summary")  # the collapsed "Advanced" fieldset
    assert "Skip the consent page (dangerous)" in page.inner_text("#application_form")
    assert "Users are never asked" in page.inner_text("#application_form")
    assert_no_horizontal_scroll(page, "admin client page")
    screenshot(page, "admin-client", viewport)
