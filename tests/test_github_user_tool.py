"""The github_user tool, in process, calling the fake GitHub's API over HTTP with the stored token."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from pytest_django.fixtures import Settings
from social_django.models import UserSocialAuth

from mcpapp.tools.context import Caller, ToolError, reset_caller, set_caller
from mcpapp.tools.github_user import github_user
from oauthapp import encryption, services
from oauthapp.models import GithubCredential
from tests.support.fake_github import FakeGithub, GithubUser

pytestmark = pytest.mark.django_db

OCTOCAT = GithubUser(login="octocat", id=583231, name="The Octocat")


@pytest.fixture
def github_api(settings: Settings, fake_github: FakeGithub) -> FakeGithub:
    settings.GITHUB_API_URL = fake_github.url
    return fake_github


@pytest.fixture
def caller() -> Iterator[Caller]:
    user = get_user_model().objects.create_user("carol", password="carol-password-789")
    caller = Caller(
        user_id=user.pk,
        username="carol",
        application_id=1,
        client_id="client-1",
        client_name="Test client",
        scopes=("mcp",),
        token_id=1,
        token_checksum="0" * 64,
        resources=(),
        expires_at=time.time() + 3600,
        issuer="http://localhost:8787",
    )
    token = set_caller(caller)
    yield caller
    reset_caller(token)


def link_github(*, user_id: int, account: GithubUser, token: str) -> UserSocialAuth:
    social = UserSocialAuth.objects.create(
        user_id=user_id, provider="github", uid=str(account.id), extra_data={"login": account.login}
    )
    services.github_token_store(social=social, access_token=token, scope="read:user,user:email")
    return social


def test_github_user_returns_the_callers_profile_from_github(github_api: FakeGithub, caller: Caller) -> None:
    token = github_api.issue_token(OCTOCAT)
    link_github(user_id=caller.user_id, account=OCTOCAT, token=token)

    profile = github_user()

    assert profile["login"] == "octocat"
    assert profile["id"] == 583231
    assert profile["name"] == "The Octocat"
    method, path, headers = github_api.requests[-1]
    assert (method, path) == ("GET", "/user")
    assert headers["Authorization"] == f"Bearer {token}"


def test_github_user_without_a_linked_account_says_so(github_api: FakeGithub, caller: Caller) -> None:
    with pytest.raises(ToolError) as raised:
        github_user()
    assert "No GitHub account is linked to carol" in str(raised.value)
    assert "/account/apps" in str(raised.value)


def test_github_user_with_a_revoked_token_asks_to_log_in_again(
    github_api: FakeGithub, caller: Caller
) -> None:
    link_github(user_id=caller.user_id, account=OCTOCAT, token="gho_revoked-or-never-issued")
    with pytest.raises(ToolError) as raised:
        github_user()
    assert "GitHub no longer accepts the stored token" in str(raised.value)


def test_github_user_when_github_is_unreachable_says_so(settings: Settings, caller: Caller) -> None:
    settings.GITHUB_API_URL = "http://127.0.0.1:9"  # discard port: nothing listens
    link_github(user_id=caller.user_id, account=OCTOCAT, token="gho_whatever")
    with pytest.raises(ToolError) as raised:
        github_user()
    assert "GitHub could not be reached" in str(raised.value)


def test_github_user_needs_an_mcp_caller() -> None:
    set_caller(None)
    with pytest.raises(ToolError):
        github_user()


def test_the_stored_token_is_encrypted_and_survives_a_secret_key_rotation(
    settings: Settings, caller: Caller
) -> None:
    social = link_github(user_id=caller.user_id, account=OCTOCAT, token="gho_plaintext-token")
    stored = GithubCredential.objects.get(social=social).ciphertext
    assert "gho_plaintext-token" not in stored
    assert encryption.decrypt(stored) == "gho_plaintext-token"

    old_key = settings.SECRET_KEY
    settings.SECRET_KEY = "a-brand-new-secret-key-after-rotation-0123456789"
    with pytest.raises(encryption.DecryptionError):
        encryption.decrypt(stored)
    settings.SECRET_KEY_FALLBACKS = [old_key]
    assert encryption.decrypt(stored) == "gho_plaintext-token"


def test_unlinking_github_deletes_the_stored_token(caller: Caller) -> None:
    social = link_github(user_id=caller.user_id, account=OCTOCAT, token="gho_to-be-forgotten")
    social.delete()
    assert not GithubCredential.objects.exists()
