"""The GitHub access policy is checked again when a GitHub user's tokens are refreshed.

A live server requiring the `acme` organisation, social-auth's real code and the fake GitHub
on loopback. "Re-checked at most every GITHUB_POLICY_RECHECK_SECONDS" is shown by ageing the
last check in the database rather than by waiting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.fake_github import CLIENT_ID, CLIENT_SECRET, FakeGithub, GithubUser, log_in_with_github
from tests.support.live import LiveServer, prepare_server
from tests.support.oauth import Browser, OAuthClient, hidden_fields, pkce_pair, query_of
from tests.test_github_login import github_user


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


def github_tokens(
    server: LiveServer, fake: FakeGithub, user: GithubUser
) -> tuple[OAuthClient, dict[str, Any]]:
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
    browser.close()
    return client, token.json()


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
