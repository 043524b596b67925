"""Log in with GitHub, end to end: a live server, social-auth's real code, a fake GitHub over HTTP."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ALICE, BOB
from tests.support.fake_github import CLIENT_ID, CLIENT_SECRET, FakeGithub, GithubUser, log_in_with_github
from tests.support.live import LiveServer, create_user, prepare_server
from tests.support.oauth import Browser, OAuthClient, csrf_from, hidden_fields, pkce_pair, query_of

_ids = itertools.count(1000)


def github_user(login: str, **fields: object) -> GithubUser:
    """A GitHub account no other test uses (ids are unique across the session)."""
    return GithubUser(login=login, id=next(_ids), **fields)  # type: ignore[arg-type]


def start_github_server(tmp: Path, fake: FakeGithub, *, with_users: bool = False, **env: Any) -> LiveServer:
    server = prepare_server(
        tmp,
        GITHUB_CLIENT_ID=CLIENT_ID,
        GITHUB_CLIENT_SECRET=CLIENT_SECRET,
        GITHUB_BASE_URL=fake.url,
        GITHUB_API_URL=fake.url,
        **env,
    )
    if with_users:
        create_user(server.env, *ALICE, email="alice@example.com")
        create_user(server.env, *BOB)
    return server.start()


@pytest.fixture(scope="module")
def github_server(tmp_path_factory: pytest.TempPathFactory, fake_github: FakeGithub) -> Iterator[LiveServer]:
    server = start_github_server(tmp_path_factory.mktemp("github"), fake_github, with_users=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def allowlist_server(
    tmp_path_factory: pytest.TempPathFactory, fake_github: FakeGithub
) -> Iterator[LiveServer]:
    server = start_github_server(
        tmp_path_factory.mktemp("allowlist"), fake_github, GITHUB_ALLOWED_USERS="octo-allowed, Hubot-Allowed"
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def org_server(tmp_path_factory: pytest.TempPathFactory, fake_github: FakeGithub) -> Iterator[LiveServer]:
    server = start_github_server(tmp_path_factory.mktemp("org"), fake_github, GITHUB_REQUIRED_ORG="acme")
    yield server
    server.stop()


def start_authorization(server: LiveServer, browser: Browser) -> tuple[OAuthClient, dict[str, str], str, str]:
    """An MCP client registers and sends the (anonymous) browser to /authorize.

    Returns the client, its authorize params, its PKCE verifier and the login page's `next`.
    """
    client = OAuthClient.register(server.url)
    verifier, challenge = pkce_pair()
    params = client.authorize_params(challenge, resource=f"{server.url}/mcp")
    first = browser.http.get("/authorize", params=params)
    assert first.status_code == 302 and first.headers["location"].startswith("/login?next=")
    return client, params, verifier, query_of(first.headers["location"])["next"]


def user_rows(server: LiveServer, username: str) -> list[tuple[object, ...]]:
    return server.sql("SELECT id, username, email FROM auth_user WHERE username = ?", (username,))


def social_rows(server: LiveServer, uid: int) -> list[tuple[Any, ...]]:
    return server.sql(
        "SELECT user_id, extra_data FROM social_auth_usersocialauth WHERE provider = 'github' AND uid = ?",
        (str(uid),),
    )


# --- Configuration -----------------------------------------------------------------------------


def test_login_page_offers_github_only_when_it_is_configured(
    server: LiveServer, github_server: LiveServer
) -> None:
    without = httpx.get(f"{server.url}/login")
    assert without.status_code == 200
    assert "Log in with GitHub" not in without.text
    with_github = httpx.get(f"{github_server.url}/login")
    assert with_github.status_code == 200
    assert "Log in with GitHub" in with_github.text


def test_github_login_without_configuration_explains_itself_instead_of_failing(server: LiveServer) -> None:
    browser = Browser(server.url)
    page = browser.http.get("/login")
    begin = browser.http.post("/login/github/", data={"csrfmiddlewaretoken": csrf_from(page.text)})
    assert begin.status_code == 302
    assert begin.headers["location"] == "/login"
    shown = browser.http.get("/login")
    assert "Log in with GitHub is not configured on this server." in shown.text
    browser.close()


# --- The whole MCP flow with GitHub --------------------------------------------------------------


def test_the_whole_mcp_oauth_flow_with_github_login_ends_in_a_token(
    github_server: LiveServer, fake_github: FakeGithub
) -> None:
    url = github_server.url
    browser = Browser(url)
    client, params, verifier, next_url = start_authorization(github_server, browser)
    assert next_url.startswith("/authorize?")

    octocat = github_user("octocat", name="The Octocat", email="octocat@example.com")
    fake_github.sign_in_as(octocat)
    back = log_in_with_github(browser, next_url=next_url)

    # GitHub was asked with the exact callback the README documents, and the user lands back
    # on the pending authorization request, not on a generic page.
    sent = fake_github.authorize_requests[-1]
    assert sent["redirect_uri"] == f"{url}/complete/github/"
    assert sent["client_id"] == CLIENT_ID
    assert back.status_code == 302, back.text
    assert back.headers["location"] == next_url

    consent = browser.http.get(back.headers["location"])
    assert consent.status_code == 200
    assert "Authorize Test MCP client?" in consent.text
    assert "<strong>octocat</strong>" in consent.text
    form = hidden_fields(consent.text)
    form["allow"] = "Authorize"
    approved = browser.http.post(f"/authorize?{httpx.QueryParams(params)}", data=form)
    assert approved.status_code == 302
    callback = query_of(approved.headers["location"])
    assert callback["state"] == params["state"]
    assert callback["iss"] == url

    token = client.exchange(callback["code"], verifier)
    assert token.status_code == 200, token.text
    assert token.json()["token_type"] == "Bearer"
    assert token.json()["scope"] == "mcp"

    # The first GitHub login created the user, with GitHub's primary email.
    [(user_id, username, email)] = user_rows(github_server, "octocat")
    assert (username, email) == ("octocat", "octocat@example.com")
    [(linked_user_id, _extra)] = social_rows(github_server, octocat.id)
    assert linked_user_id == user_id
    browser.close()


def test_a_github_user_calls_the_add_tool_over_mcp(
    github_server: LiveServer, fake_github: FakeGithub
) -> None:
    browser = Browser(github_server.url)
    client, params, verifier, next_url = start_authorization(github_server, browser)
    fake_github.sign_in_as(github_user("adder"))
    back = log_in_with_github(browser, next_url=next_url)
    consent = browser.http.get(back.headers["location"])
    form = hidden_fields(consent.text)
    form["allow"] = "Authorize"
    approved = browser.http.post(f"/authorize?{httpx.QueryParams(params)}", data=form)
    code = query_of(approved.headers["location"])["code"]
    access_token = client.exchange(code, verifier).json()["access_token"]
    browser.close()

    headers = {
        "Authorization": f"Bearer {access_token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    with httpx.Client(base_url=github_server.url, timeout=30) as mcp:
        init = mcp.post(
            "/mcp",
            headers=headers,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "github-login-test", "version": "1"},
                },
            },
        )
        assert init.status_code == 200, init.text
        session_headers = {**headers, "Mcp-Session-Id": init.headers["mcp-session-id"]}
        mcp.post(
            "/mcp", headers=session_headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
        )
        call = mcp.post(
            "/mcp",
            headers=session_headers,
            json={
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "add", "arguments": {"a": 23, "b": 19}},
            },
        )
        assert call.status_code == 200, call.text
        result = jsonrpc_result(call, request_id=2)
        assert result.get("isError") is not True, result
        assert result["content"][0]["text"] == "42"


def jsonrpc_result(response: httpx.Response, *, request_id: int) -> dict[str, Any]:
    """The result of JSON-RPC request `request_id`, from a JSON or an SSE answer."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        messages = [
            json.loads(line.removeprefix("data:").strip())
            for line in response.text.splitlines()
            if line.startswith("data:")
        ]
    else:
        body = response.json()
        messages = body if isinstance(body, list) else [body]
    [answer] = [message for message in messages if message.get("id") == request_id]
    return answer["result"]


def test_a_later_github_login_finds_the_same_user(github_server: LiveServer, fake_github: FakeGithub) -> None:
    account = github_user("returning-user")
    for _ in range(2):
        browser = Browser(github_server.url)
        fake_github.sign_in_as(account)
        back = log_in_with_github(browser)
        assert back.status_code == 302, back.text
        browser.close()
    # GitHub logins can be renamed; the link is by GitHub's numeric id.
    fake_github.sign_in_as(GithubUser(login="renamed-user", id=account.id))
    browser = Browser(github_server.url)
    assert log_in_with_github(browser).status_code == 302
    apps = browser.http.get("/account/apps")
    assert "Log out returning-user" in apps.text
    browser.close()

    assert len(user_rows(github_server, "returning-user")) == 1
    assert user_rows(github_server, "renamed-user") == []
    assert len(social_rows(github_server, account.id)) == 1


def test_the_github_token_is_stored_encrypted_and_never_in_extra_data(
    github_server: LiveServer, fake_github: FakeGithub
) -> None:
    account = github_user("secretive")
    fake_github.sign_in_as(account)
    browser = Browser(github_server.url)
    assert log_in_with_github(browser).status_code == 302
    browser.close()
    tokens = [token for token, user in fake_github.tokens.items() if user.id == account.id]
    assert len(tokens) == 1

    [(user_id, extra_data)] = social_rows(github_server, account.id)
    assert "access_token" not in extra_data
    assert '"login": "secretive"' in extra_data
    dump = "\n".join(
        repr(row)
        for table in ("social_auth_usersocialauth", "oauthapp_githubcredential", "django_session")
        for row in github_server.sql(f"SELECT * FROM {table}")
    )
    assert tokens[0] not in dump
    [(ciphertext, scope)] = github_server.sql(
        "SELECT c.ciphertext, c.scope FROM oauthapp_githubcredential c "
        "JOIN social_auth_usersocialauth s ON s.id = c.social_id WHERE s.user_id = ?",
        (user_id,),
    )
    assert ciphertext.startswith("gAAAA")  # a Fernet token
    assert scope == "read:user,user:email"


# --- Who may log in ------------------------------------------------------------------------------


def test_the_allowlist_refuses_other_github_users_without_creating_a_user(
    allowlist_server: LiveServer, fake_github: FakeGithub
) -> None:
    browser = Browser(allowlist_server.url)
    _client, _params, _verifier, next_url = start_authorization(allowlist_server, browser)
    mallory = github_user("mallory")
    fake_github.sign_in_as(mallory)
    back = log_in_with_github(browser, next_url=next_url)
    assert back.status_code == 302
    assert back.headers["location"] == f"/login?{httpx.QueryParams({'next': next_url})}"
    page = browser.http.get(back.headers["location"])
    assert "The GitHub account @mallory is not on this server&#x27;s list of allowed users." in page.text
    assert "Deny access to Test MCP client" in page.text
    assert user_rows(allowlist_server, "mallory") == []
    assert social_rows(allowlist_server, mallory.id) == []
    assert browser.http.get("/account/apps").status_code == 302  # still not logged in
    browser.close()


def test_the_allowlist_admits_listed_users_whatever_their_letter_case(
    allowlist_server: LiveServer, fake_github: FakeGithub
) -> None:
    browser = Browser(allowlist_server.url)
    fake_github.sign_in_as(github_user("hubot-allowed"))
    back = log_in_with_github(browser)
    assert back.status_code == 302
    assert back.headers["location"] == "/"
    assert len(user_rows(allowlist_server, "hubot-allowed")) == 1
    browser.close()


def test_a_required_organisation_refuses_non_members_and_admits_members(
    org_server: LiveServer, fake_github: FakeGithub
) -> None:
    outsider = github_user("outsider", orgs=("other-org",))
    fake_github.sign_in_as(outsider)
    browser = Browser(org_server.url)
    refused = log_in_with_github(browser)
    assert refused.headers["location"] == "/login"
    page = browser.http.get("/login")
    assert "@outsider is not a member of the acme organisation" in page.text
    assert user_rows(org_server, "outsider") == []
    assert social_rows(org_server, outsider.id) == []
    assert "/orgs/acme/members/outsider" in fake_github.paths_requested()
    # Private memberships are only visible with read:org.
    assert "read:org" in fake_github.authorize_requests[-1]["scope"].split(",")

    member = github_user("insider", orgs=("acme",))
    fake_github.sign_in_as(member)
    admitted = log_in_with_github(browser)
    assert admitted.headers["location"] == "/"
    assert len(user_rows(org_server, "insider")) == 1
    browser.close()


# --- Cancel and errors ---------------------------------------------------------------------------


def test_cancelling_at_github_shows_why_and_lets_the_user_deny_the_client(
    github_server: LiveServer, fake_github: FakeGithub
) -> None:
    browser = Browser(github_server.url)
    client, params, _verifier, next_url = start_authorization(github_server, browser)
    fake_github.cancel_next()
    back = log_in_with_github(browser, next_url=next_url)
    assert back.status_code == 302
    assert back.headers["location"] == f"/login?{httpx.QueryParams({'next': next_url})}"

    page = browser.http.get(back.headers["location"])
    assert page.status_code == 200
    assert '<p class="error" id="login-error">You cancelled the login at GitHub.</p>' in page.text
    assert "to continue to <strong>Test MCP client</strong>" in page.text
    assert "Deny access to Test MCP client" in page.text
    # The reason is shown once; a reload does not repeat it.
    assert "You cancelled the login" not in browser.http.get(back.headers["location"]).text

    denied = browser.http.post(
        "/login/deny", data={"csrfmiddlewaretoken": csrf_from(page.text), "next": next_url}
    )
    assert denied.status_code == 302
    location = denied.headers["location"]
    assert location.startswith(client.redirect_uri + "?")
    answer = query_of(location)
    assert answer["error"] == "access_denied"
    assert answer["state"] == params["state"]
    assert answer["iss"] == github_server.url
    assert "code" not in answer
    browser.close()


def test_a_github_error_is_explained_without_echoing_its_text(
    github_server: LiveServer, fake_github: FakeGithub
) -> None:
    browser = Browser(github_server.url)
    fake_github.cancel_next(error="redirect_uri_mismatch")
    back = log_in_with_github(browser)
    assert back.headers["location"] == "/login"
    page = browser.http.get("/login")
    assert "the callback URL registered in the GitHub OAuth App" in page.text
    assert "has denied your application" not in page.text

    forged = browser.http.get(
        "/complete/github/", params={"error": "weird", "error_description": "Call +1-555 to verify"}
    )
    assert forged.status_code == 302
    page = browser.http.get(forged.headers["location"])
    assert "Call +1-555" not in page.text
    assert "GitHub said: weird" in page.text
    browser.close()


def test_deny_never_redirects_to_an_unvalidated_uri(github_server: LiveServer) -> None:
    browser = Browser(github_server.url)
    client = OAuthClient.register(github_server.url)
    _verifier, challenge = pkce_pair()
    params = client.authorize_params(challenge, redirect_uri="https://evil.example/callback")
    next_url = f"/authorize?{httpx.QueryParams(params)}"
    page = browser.http.get("/login", params={"next": next_url})
    assert "Deny access" not in page.text
    denied = browser.http.post(
        "/login/deny", data={"csrfmiddlewaretoken": csrf_from(page.text), "next": next_url}
    )
    assert denied.status_code == 302
    assert denied.headers["location"] == "/login"
    assert "not valid any more" in browser.http.get("/login").text
    for bogus in ("https://evil.example/authorize?x=1", "/account/apps", "not a url"):
        answer = browser.http.post(
            "/login/deny", data={"csrfmiddlewaretoken": csrf_from(page.text), "next": bogus}
        )
        assert answer.headers["location"] == "/login"
    browser.close()


def test_deny_needs_the_csrf_token(github_server: LiveServer) -> None:
    browser = Browser(github_server.url)
    client = OAuthClient.register(github_server.url)
    next_url = f"/authorize?{httpx.QueryParams(client.authorize_params(pkce_pair()[1]))}"
    browser.http.get("/login", params={"next": next_url})
    assert browser.http.post("/login/deny", data={"next": next_url}).status_code == 403
    browser.close()


# --- Linking an existing user --------------------------------------------------------------------


def test_an_existing_user_links_github_from_the_connected_apps_page(
    github_server: LiveServer, fake_github: FakeGithub
) -> None:
    browser = Browser(github_server.url)
    assert browser.login(*ALICE).status_code == 302
    assert "Link GitHub account" in browser.http.get("/account/apps").text

    alice_at_github = github_user("alice-gh", email="alice@github.example")
    fake_github.sign_in_as(alice_at_github)
    back = log_in_with_github(browser, next_url="/account/apps", page="/account/apps")
    assert back.status_code == 302
    assert back.headers["location"] == "/account/apps"
    apps = browser.http.get("/account/apps")
    assert "Linked to the GitHub account <strong>@alice-gh</strong>" in apps.text
    browser.close()

    [(alice_id, _name, email)] = user_rows(github_server, "alice")
    assert email == "alice@example.com"  # a link never rewrites the local account's email
    [(linked_user_id, _extra)] = social_rows(github_server, alice_at_github.id)
    assert linked_user_id == alice_id
    assert user_rows(github_server, "alice-gh") == []

    # From now on, GitHub logs her in as alice.
    fresh = Browser(github_server.url)
    fake_github.sign_in_as(alice_at_github)
    assert log_in_with_github(fresh).status_code == 302
    assert "Log out alice" in fresh.http.get("/account/apps").text
    fresh.close()


def test_a_github_account_linked_to_someone_else_cannot_be_linked_again(
    github_server: LiveServer, fake_github: FakeGithub
) -> None:
    taken = github_user("taken-gh")
    owner = Browser(github_server.url)
    fake_github.sign_in_as(taken)
    assert log_in_with_github(owner).status_code == 302
    owner.close()

    browser = Browser(github_server.url)
    assert browser.login(*BOB).status_code == 302
    fake_github.sign_in_as(taken)
    back = log_in_with_github(browser, next_url="/account/apps", page="/account/apps")
    assert back.headers["location"] == "/account/apps"
    apps = browser.http.get("/account/apps")
    assert "That GitHub account is already linked to another user of this server." in apps.text
    assert "Link GitHub account" in apps.text
    [(bob_id, _name, _email)] = user_rows(github_server, "bob")
    [(linked_user_id, _extra)] = social_rows(github_server, taken.id)
    assert linked_user_id != bob_id
    browser.close()


def test_unlinking_github_removes_the_link_and_its_token_unless_it_is_the_only_way_in(
    github_server: LiveServer, fake_github: FakeGithub
) -> None:
    # A GitHub-only user (no password) cannot lock themselves out.
    only_github = github_user("github-only")
    browser = Browser(github_server.url)
    fake_github.sign_in_as(only_github)
    assert log_in_with_github(browser).status_code == 302
    apps = browser.http.get("/account/apps")
    refused = browser.http.post(
        "/disconnect/github/", data={"csrfmiddlewaretoken": csrf_from(apps.text), "next": "/account/apps"}
    )
    assert refused.headers["location"] == "/account/apps"
    assert "GitHub is your only way to log in" in browser.http.get("/account/apps").text
    assert len(social_rows(github_server, only_github.id)) == 1
    browser.close()

    # A user with a password can unlink; the stored token goes with the link.
    linked = github_user("bob-gh")
    browser = Browser(github_server.url)
    assert browser.login(*BOB).status_code == 302
    fake_github.sign_in_as(linked)
    assert log_in_with_github(browser, next_url="/account/apps", page="/account/apps").status_code == 302
    [(bob_id, _name, _email)] = user_rows(github_server, "bob")
    count_tokens = (
        "SELECT COUNT(*) FROM oauthapp_githubcredential c "
        "JOIN social_auth_usersocialauth s ON s.id = c.social_id WHERE s.user_id = ?"
    )
    assert github_server.sql(count_tokens, (bob_id,)) == [(1,)]
    apps = browser.http.get("/account/apps")
    unlinked = browser.http.post(
        "/disconnect/github/", data={"csrfmiddlewaretoken": csrf_from(apps.text), "next": "/account/apps"}
    )
    assert unlinked.headers["location"] == f"{github_server.url}/account/apps"
    assert "Link GitHub account" in browser.http.get("/account/apps").text
    assert social_rows(github_server, linked.id) == []
    assert github_server.sql(count_tokens, (bob_id,)) == [(0,)]
    browser.close()
