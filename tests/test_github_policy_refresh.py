"""The GitHub access policy is checked again after login: when a GitHub user's tokens are
refreshed, at /authorize before a code is issued, when a personal token is made or used.

A live server requiring the `acme` organisation, social-auth's real code and the fake GitHub
on loopback. "Re-checked at most every GITHUB_POLICY_RECHECK_SECONDS" is shown by ageing the
last check in the database rather than by waiting.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_github import CLIENT_ID, CLIENT_SECRET, FakeGithub, GithubUser, log_in_with_github
from tests.support.live import LiveServer, prepare_server
from tests.support.mcp_http import ACCEPT, initialize_body
from tests.support.oauth import Browser, OAuthClient, hidden_fields, pkce_pair, query_of
from tests.test_github_login import github_user
from tests.test_personal_tokens import create_on_page, token_on


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory: pytest.TempPathFactory, fake_github: FakeGithub) -> Iterator[LiveServer]:
    server = prepare_server(
        tmp_path_factory.mktemp("policy"),
        GITHUB_CLIENT_ID=CLIENT_ID,
        GITHUB_CLIENT_SECRET=CLIENT_SECRET,
        GITHUB_BASE_URL=fake_github.url,
        GITHUB_API_URL=fake_github.url,
        GITHUB_REQUIRED_ORG="acme",
    ).start()
    yield server
    server.stop()


@dataclass
class GithubSession:
    """`user` logged in with GitHub in `browser` and approved `client`, which holds `tokens`."""

    client: OAuthClient
    tokens: dict[str, Any]
    browser: Browser


def github_session(server: LiveServer, fake: FakeGithub, user: GithubUser) -> GithubSession:
    """The whole flow as `user` logging in with GitHub: register, GitHub login, consent, token."""
    browser = Browser(server.url)
    client = OAuthClient.register(server.url)
    verifier, challenge = pkce_pair()
    params = client.authorize_params(challenge)
    first = browser.http.get("/authorize", params=params)
    assert first.status_code == 302
    fake.sign_in_as(user)
    back = log_in_with_github(browser, next_url=query_of(first.headers["location"])["next"])
    assert back.status_code == 302, back.text
    consent = browser.http.get(back.headers["location"])
    form = {**hidden_fields(consent.text), "allow": "Authorize"}
    approved = browser.http.post(f"/authorize?{httpx.QueryParams(params)}", data=form)
    token = client.exchange(query_of(approved.headers["location"])["code"], verifier)
    assert token.status_code == 200, token.text
    return GithubSession(client=client, tokens=token.json(), browser=browser)


def github_tokens(
    server: LiveServer, fake: FakeGithub, user: GithubUser
) -> tuple[OAuthClient, dict[str, Any]]:
    session = github_session(server, fake, user)
    session.browser.close()
    return session.client, session.tokens


def authorize_again(session: GithubSession) -> httpx.Response:
    """The client sends the same browser to /authorize again (mcp-remote after invalid_grant)."""
    return session.browser.http.get("/authorize", params=session.client.authorize_params(pkce_pair()[1]))


def assert_sent_to_login(session: GithubSession, answer: httpx.Response, reason: str) -> None:
    """No code: the browser is logged out and on the login page, which says why."""
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith("/login?next="), location
    assert "code=" not in location
    page = session.browser.http.get(location)
    assert page.status_code == 200
    assert reason in page.text
    # Logged out for good: the account pages want a login too.
    assert session.browser.http.get("/account/apps").status_code == 302


def user_rows(server: LiveServer, table: str, user: GithubUser) -> int:
    ((count,),) = server.sql(
        f"SELECT COUNT(*) FROM {table} t JOIN auth_user u ON u.id = t.user_id WHERE u.username = ?",
        (user.login,),
    )
    return int(count)


def refused_on(server: LiveServer, user: GithubUser) -> list[str]:
    recorded = server.sql(
        "SELECT detail FROM oauthapp_oauthevent WHERE kind = 'github_policy_refused' AND username = ? "
        "ORDER BY id",
        (user.login,),
    )
    return [json.loads(detail)["on"] for (detail,) in recorded]


def last_checked(server: LiveServer, user: GithubUser, *, ago: timedelta) -> None:
    """Pretend GitHub last confirmed `user` passes the policy `ago` (login counts as a check)."""
    when = (datetime.now(UTC) - ago).strftime("%Y-%m-%d %H:%M:%S.%f")
    server.sql(
        "UPDATE oauthapp_githubcredential SET policy_checked_at = ?, updated = ? WHERE social_id = "
        "(SELECT id FROM social_auth_usersocialauth WHERE provider = 'github' AND uid = ?)",
        (when, when, str(user.id)),
    )


def membership_checks(fake: FakeGithub, user: GithubUser) -> int:
    return fake.paths_requested().count(f"/orgs/acme/members/{user.login}")


def test_a_refresh_rechecks_the_policy_at_most_every_few_minutes(
    policy_server: LiveServer, fake_github: FakeGithub
) -> None:
    member = github_user("still-a-member", orgs=("acme",))
    client, tokens = github_tokens(policy_server, fake_github, member)
    at_login = membership_checks(fake_github, member)
    # Just logged in: the login's check is recent, GitHub is not asked again.
    fresh = client.refresh(tokens["refresh_token"])
    assert fresh.status_code == 200, fresh.text
    assert membership_checks(fake_github, member) == at_login
    # Five minutes later it is.
    last_checked(policy_server, member, ago=timedelta(minutes=6))
    rechecked = client.refresh(fresh.json()["refresh_token"])
    assert rechecked.status_code == 200, rechecked.text
    assert membership_checks(fake_github, member) == at_login + 1
    again = client.refresh(rechecked.json()["refresh_token"])
    assert again.status_code == 200, again.text
    assert membership_checks(fake_github, member) == at_login + 1


def test_a_user_who_left_the_organisation_loses_the_grant_on_refresh(
    policy_server: LiveServer, fake_github: FakeGithub
) -> None:
    leaver = github_user("about-to-leave", orgs=("acme",))
    client, tokens = github_tokens(policy_server, fake_github, leaver)
    leaver.orgs = ()
    last_checked(policy_server, leaver, ago=timedelta(minutes=6))
    refused = client.refresh(tokens["refresh_token"])
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_grant"
    assert "no longer a member of the acme organisation" in refused.json()["error_description"]
    # Every token of the user died, the access token given at login included.
    assert policy_server.sql(
        "SELECT COUNT(*) FROM oauth2_provider_accesstoken t JOIN auth_user u ON u.id = t.user_id "
        "WHERE u.username = ?",
        (leaver.login,),
    ) == [(0,)]
    assert client.refresh(tokens["refresh_token"]).json()["error"] == "invalid_grant"
    recorded = policy_server.sql(
        "SELECT detail FROM oauthapp_oauthevent WHERE kind = 'github_policy_refused' AND username = ?",
        (leaver.login,),
    )
    assert [json.loads(detail)["on"] for (detail,) in recorded] == ["refresh"]


def test_while_github_is_unreachable_the_last_check_stands_for_a_while_then_it_is_a_503(
    policy_server: LiveServer, fake_github: FakeGithub
) -> None:
    member = github_user("member-during-outage", orgs=("acme",))
    client, tokens = github_tokens(policy_server, fake_github, member)
    fake_github.api_unavailable = True
    try:
        last_checked(policy_server, member, ago=timedelta(minutes=6))
        postponed = client.refresh(tokens["refresh_token"])
        assert postponed.status_code == 200, postponed.text
        last_checked(policy_server, member, ago=timedelta(days=2))
        unavailable = client.refresh(postponed.json()["refresh_token"])
        assert unavailable.status_code == 503, unavailable.text
        assert unavailable.json()["error"] == "temporarily_unavailable"
        assert unavailable.headers["retry-after"] == "5"
    finally:
        fake_github.api_unavailable = False
    # Nothing was revoked: the same refresh token works once GitHub answers.
    recovered = client.refresh(postponed.json()["refresh_token"])
    assert recovered.status_code == 200, recovered.text


def test_a_login_refused_by_the_policy_is_recorded(
    policy_server: LiveServer, fake_github: FakeGithub
) -> None:
    outsider = github_user("not-in-acme")
    browser = Browser(policy_server.url)
    fake_github.sign_in_as(outsider)
    back = log_in_with_github(browser)
    assert back.status_code == 302
    recorded = policy_server.sql(
        "SELECT address, detail FROM oauthapp_oauthevent "
        "WHERE kind = 'github_policy_refused' AND username = ?",
        (outsider.login,),
    )
    assert len(recorded) == 1
    address, detail = recorded[0]
    assert address == "127.0.0.1"
    assert json.loads(detail)["on"] == "login" and "acme" in json.loads(detail)["reason"]
    browser.close()


# --- After login, elsewhere than at refresh ------------------------------------------------------


def test_after_a_refused_refresh_the_same_browser_gets_no_code(
    policy_server: LiveServer, fake_github: FakeGithub
) -> None:
    leaver = github_user("refused-then-retries", orgs=("acme",))
    session = github_session(policy_server, fake_github, leaver)
    leaver.orgs = ()
    last_checked(policy_server, leaver, ago=timedelta(minutes=6))
    assert session.client.refresh(session.tokens["refresh_token"]).json()["error"] == "invalid_grant"
    # mcp-remote opens the browser again: the approval is remembered, the login is not.
    again = authorize_again(session)
    assert again.status_code == 302 and again.headers["location"].startswith("/login?next="), again.text
    assert user_rows(policy_server, "oauth2_provider_grant", leaver) == 0
    # And GitHub's login is checked again, as ever.
    fake_github.sign_in_as(leaver)
    back = log_in_with_github(session.browser, next_url=query_of(again.headers["location"])["next"])
    assert back.status_code == 302 and back.headers["location"].startswith("/login"), back.text
    assert user_rows(policy_server, "oauth2_provider_grant", leaver) == 0
    session.browser.close()


def test_a_user_who_no_longer_passes_gets_no_code_at_authorize_and_loses_the_grant(
    policy_server: LiveServer, fake_github: FakeGithub
) -> None:
    leaver = github_user("leaves-between-logins", orgs=("acme",))
    session = github_session(policy_server, fake_github, leaver)
    leaver.orgs = ()
    last_checked(policy_server, leaver, ago=timedelta(minutes=6))
    assert_sent_to_login(session, authorize_again(session), "no longer a member of the acme organisation")
    assert user_rows(policy_server, "oauth2_provider_grant", leaver) == 0
    assert user_rows(policy_server, "oauth2_provider_accesstoken", leaver) == 0
    assert session.client.refresh(session.tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert refused_on(policy_server, leaver) == ["authorize"]
    session.browser.close()


def test_authorize_rechecks_at_most_every_few_minutes(
    policy_server: LiveServer, fake_github: FakeGithub
) -> None:
    member = github_user("authorizes-often", orgs=("acme",))
    session = github_session(policy_server, fake_github, member)
    at_login = membership_checks(fake_github, member)
    again = authorize_again(session)
    assert again.status_code == 302 and "code=" in again.headers["location"], again.text
    assert membership_checks(fake_github, member) == at_login
    last_checked(policy_server, member, ago=timedelta(minutes=6))
    later = authorize_again(session)
    assert later.status_code == 302 and "code=" in later.headers["location"], later.text
    assert membership_checks(fake_github, member) == at_login + 1
    session.browser.close()


def test_while_github_is_unreachable_too_long_authorize_says_so_and_revokes_nothing(
    policy_server: LiveServer, fake_github: FakeGithub
) -> None:
    member = github_user("authorizes-during-outage", orgs=("acme",))
    session = github_session(policy_server, fake_github, member)
    fake_github.api_unavailable = True
    try:
        last_checked(policy_server, member, ago=timedelta(days=2))
        waiting = authorize_again(session)
        assert waiting.status_code == 503, waiting.text
        assert waiting.headers["retry-after"] == "5"
        assert "GitHub cannot be reached to confirm your access" in waiting.text
    finally:
        fake_github.api_unavailable = False
    assert user_rows(policy_server, "oauth2_provider_accesstoken", member) == 1
    back = authorize_again(session)
    assert back.status_code == 302 and "code=" in back.headers["location"], back.text
    session.browser.close()


def test_a_token_github_no_longer_accepts_loses_the_grant_at_authorize(
    policy_server: LiveServer, fake_github: FakeGithub
) -> None:
    user = github_user("removed-the-app-at-github", orgs=("acme",))
    session = github_session(policy_server, fake_github, user)
    fake_github.revoke_tokens_of(user)
    last_checked(policy_server, user, ago=timedelta(minutes=6))
    assert_sent_to_login(session, authorize_again(session), "GitHub no longer accepts this server")
    assert user_rows(policy_server, "oauth2_provider_accesstoken", user) == 0
    session.browser.close()


def test_removal_from_the_allowlist_is_caught_at_once(tmp_path: Path, fake_github: FakeGithub) -> None:
    listed = github_user("listed-for-now", orgs=())
    server = prepare_server(
        tmp_path,
        GITHUB_CLIENT_ID=CLIENT_ID,
        GITHUB_CLIENT_SECRET=CLIENT_SECRET,
        GITHUB_BASE_URL=fake_github.url,
        GITHUB_API_URL=fake_github.url,
        GITHUB_ALLOWED_USERS=f"someone-else,{listed.login}",
    ).start()
    try:
        session = github_session(server, fake_github, listed)
        first = session.client.refresh(session.tokens["refresh_token"])
        assert first.status_code == 200, first.text
        # The operator takes the account off the list and restarts the server, a minute after
        # GitHub last confirmed it: no waiting for the next re-check.
        server.stop()
        server.env["GITHUB_ALLOWED_USERS"] = "someone-else"
        server.start()
        refused = session.client.refresh(first.json()["refresh_token"])
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "invalid_grant"
        assert "no longer on this server's list of allowed users" in refused.json()["error_description"]
        assert authorize_again(session).headers["location"].startswith("/login?next=")
        assert user_rows(server, "oauth2_provider_grant", listed) == 0
        session.browser.close()
    finally:
        server.stop()


def test_refresh_asks_github_outside_the_transaction_so_other_writes_go_on(
    policy_server: LiveServer, fake_github: FakeGithub
) -> None:
    member = github_user("refreshes-while-github-is-slow", orgs=("acme",))
    client, tokens = github_tokens(policy_server, fake_github, member)
    last_checked(policy_server, member, ago=timedelta(minutes=6))
    asked_before = fake_github.paths_requested().count("/user")
    refreshed: list[httpx.Response] = []

    def refresh() -> None:
        refreshed.append(client.refresh(tokens["refresh_token"]))

    fake_github.api_delay = 3.0  # the profile, then the membership: six seconds
    try:
        refreshing = threading.Thread(target=refresh)
        refreshing.start()
        deadline = time.monotonic() + 10
        while fake_github.paths_requested().count("/user") == asked_before:
            assert time.monotonic() < deadline, "the refresh never asked GitHub"
            time.sleep(0.05)
        # While the refresh waits for GitHub, a write elsewhere (a registration) is not held up
        # (on SQLite a transaction open meanwhile would hold every write).
        OAuthClient.register(policy_server.url, client_name="registered while GitHub is slow")
        assert refreshing.is_alive(), "the registration waited for the refresh to finish"
        refreshing.join(timeout=30)
    finally:
        fake_github.api_delay = 0.0
    assert refreshed and refreshed[0].status_code == 200, refreshed


def test_two_refreshes_with_one_token_while_github_is_slow_both_get_the_same_tokens(
    policy_server: LiveServer, fake_github: FakeGithub
) -> None:
    """The check moved out of the transaction; the row lock still decides: the second refresh
    gets what the first minted (the grace period), and nothing is revoked."""
    member = github_user("refreshes-twice-at-once", orgs=("acme",))
    client, tokens = github_tokens(policy_server, fake_github, member)
    last_checked(policy_server, member, ago=timedelta(minutes=6))
    answers: list[httpx.Response] = []

    def refresh() -> None:
        answers.append(client.refresh(tokens["refresh_token"]))

    fake_github.api_delay = 1.0
    try:
        both = [threading.Thread(target=refresh) for _ in range(2)]
        for thread in both:
            thread.start()
        for thread in both:
            thread.join(timeout=30)
    finally:
        fake_github.api_delay = 0.0
    assert [answer.status_code for answer in answers] == [200, 200], [a.text for a in answers]
    first, second = (answer.json() for answer in answers)
    assert first["access_token"] == second["access_token"]
    assert first["refresh_token"] == second["refresh_token"]
    again = client.refresh(first["refresh_token"])
    assert again.status_code == 200, again.text


# --- Personal access tokens ----------------------------------------------------------------------


def test_a_user_who_no_longer_passes_cannot_make_a_personal_token(
    policy_server: LiveServer, fake_github: FakeGithub
) -> None:
    leaver = github_user("wants-a-token-after-leaving", orgs=("acme",))
    session = github_session(policy_server, fake_github, leaver)
    leaver.orgs = ()
    last_checked(policy_server, leaver, ago=timedelta(minutes=6))
    answer = create_on_page(session.browser, "after leaving")
    assert user_rows(policy_server, "oauthapp_personalaccesstoken", leaver) == 0
    assert_sent_to_login(session, answer, "no longer a member of the acme organisation")
    assert refused_on(policy_server, leaver) == ["personal token"]
    session.browser.close()


def test_a_personal_token_in_use_is_revoked_once_its_user_no_longer_passes(
    policy_server: LiveServer, fake_github: FakeGithub
) -> None:
    leaver = github_user("scripts-with-a-token", orgs=("acme",))
    session = github_session(policy_server, fake_github, leaver)
    made = create_on_page(session.browser, "ci")
    assert made.status_code == 200, made.text
    token = token_on(made)
    session.browser.close()
    leaver.orgs = ()
    last_checked(policy_server, leaver, ago=timedelta(minutes=6))
    # Its use re-checks the policy off the request path; within seconds the token stops working.
    deadline = time.monotonic() + 15
    while open_mcp(policy_server, token) != 401:
        assert time.monotonic() < deadline, "the personal token still works"
        time.sleep(0.3)
    assert refused_on(policy_server, leaver) == ["personal token use"]
    (revoked_at,) = policy_server.sql(
        "SELECT p.revoked_at FROM oauthapp_personalaccesstoken p JOIN auth_user u ON u.id = p.user_id "
        "WHERE u.username = ?",
        (leaver.login,),
    )[0]
    assert revoked_at is not None


def open_mcp(server: LiveServer, token: str) -> int:
    return httpx.post(
        f"{server.url}/mcp",
        json=initialize_body(),
        headers={"Accept": ACCEPT, "Authorization": f"Bearer {token}"},
        timeout=30,
    ).status_code
