"""Log in with GitHub: the social-auth backend, our pipeline steps, and what users are told.

The backend is social-core's GitHub backend with every endpoint configurable
(GITHUB_BASE_URL for the login pages, GITHUB_API_URL for the API: GitHub Enterprise, or a fake
GitHub in the tests) and the callback built from PUBLIC_URL. The pipeline (SOCIAL_AUTH_PIPELINE
in settings) adds two steps: the access policy, before any user is looked up or created, and
the token store, which keeps the GitHub token encrypted and out of `extra_data`.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.urls import reverse
from social_core.backends.github import GithubOAuth2
from social_core.exceptions import (
    AuthAssociationError,
    AuthCanceled,
    AuthConfigurationError,
    AuthPolicyError,
    AuthProviderError,
    AuthSessionError,
    SocialAuthBaseException,
)

from . import services
from .models import OAuthEvent
from .throttle import client_address

# Keys of social-auth's extra_data that hold secrets; they are never kept there.
SECRET_EXTRA_DATA_KEYS = ("access_token", "refresh_token", "id_token")


class GithubBackend(GithubOAuth2):
    """GitHub login against the configured GitHub (github.com by default)."""

    name = "github"

    def api_url(self) -> str:
        return f"{settings.GITHUB_API_URL}/"

    def get_redirect_uri(self, state: str | None = None) -> str:
        # Exactly what the README tells operators to register, whatever Host the request had.
        return f"{settings.PUBLIC_URL}{reverse('social:complete', args=(self.name,))}"

    def auth_url(self) -> str:
        if not settings.GITHUB_ENABLED:
            raise AuthConfigurationError(
                self, code="missing_setting", parameter="GITHUB_CLIENT_ID", stage="begin"
            )
        return super().auth_url()

    def auth_complete(self, *args: Any, **kwargs: Any) -> Any:
        if not settings.GITHUB_ENABLED:
            raise AuthConfigurationError(
                self, code="missing_setting", parameter="GITHUB_CLIENT_ID", stage="callback"
            )
        return super().auth_complete(*args, **kwargs)

    def is_org_member(self, *, access_token: str, login: str, org: str) -> bool:
        """GitHub answers 204 for a member, 404 (or 302) otherwise."""
        url = f"{self.api_url()}orgs/{org}/members/{login}"
        try:
            response = self.request(
                url,
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/vnd.github+json"},
                stage="pipeline",
            )
        except AuthProviderError as exc:
            if exc.status_code in {403, 404}:
                return False
            raise
        return response.status_code == 204


class GithubAccessRefused(AuthPolicyError):
    """This server's GitHub access policy refused the account; `reason` is shown to the user."""

    def __init__(self, backend: GithubBackend, reason: str) -> None:
        super().__init__(backend, reason, code="authentication_disallowed", stage="pipeline")
        self.reason = reason


def access_refusal(*, backend: GithubBackend, login: str, access_token: str) -> str | None:
    """Why the GitHub account `login` may not log in here, or None when it may."""
    allowed = settings.GITHUB_ALLOWED_USERS
    if allowed and login.lower() not in allowed:
        return f"The GitHub account @{login} is not on this server's list of allowed users."
    org = settings.GITHUB_REQUIRED_ORG
    if org and not backend.is_org_member(access_token=access_token, login=login, org=org):
        return (
            f"The GitHub account @{login} is not a member of the {org} organisation, "
            "which this server requires."
        )
    return None


def enforce_access_policy(
    backend: GithubBackend, response: dict[str, Any], *args: Any, **kwargs: Any
) -> None:
    """Pipeline step: refuse before any user is found, created or linked."""
    if backend.name != GithubBackend.name:
        return
    login = str(response.get("login") or "")
    reason = access_refusal(
        backend=backend, login=login, access_token=str(response.get("access_token") or "")
    )
    if reason is not None:
        request = getattr(backend.strategy, "request", None)
        services.oauth_event_record(
            kind=OAuthEvent.Kind.GITHUB_POLICY_REFUSED,
            username=login,
            address=client_address(request) if request is not None else None,
            detail={"reason": reason, "on": "login"},
        )
        raise GithubAccessRefused(backend, reason)


def store_extra_data_and_token(
    backend: GithubBackend,
    details: dict[str, Any],
    response: dict[str, Any],
    uid: str,
    user: Any = None,
    *args: Any,
    **kwargs: Any,
) -> None:
    """Pipeline step in place of load_extra_data: profile facts in extra_data, the token sealed."""
    social = kwargs.get("social") or backend.strategy.storage.user.get_social_auth(backend.name, uid)
    if social is None:
        return
    extra = backend.extra_data(user, uid, response, details, kwargs)
    token = extra.get("access_token")
    social.extra_data = {
        key: value
        for key, value in {**(social.extra_data or {}), **extra}.items()
        if key not in SECRET_EXTRA_DATA_KEYS
    }
    social.save(update_fields=["extra_data", "modified"])
    if token and backend.name == GithubBackend.name:
        services.github_token_store(
            social=social, access_token=str(token), scope=str(response.get("scope") or "")
        )


# --- What the user is told -------------------------------------------------------------------

_GITHUB_ERRORS = {
    "access_denied": "You cancelled the login at GitHub.",
    "redirect_uri_mismatch": "GitHub refused the login: the callback URL registered in the GitHub OAuth App "
    "does not match this server. An administrator must fix the OAuth App.",
    "application_suspended": "GitHub refused the login: this server's GitHub OAuth App is suspended.",
    "incorrect_client_credentials": "GitHub refused this server's client id or secret. "
    "An administrator must check GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET.",
    "bad_verification_code": "GitHub did not accept the login code (it may have expired). Please try again.",
}
_CODE = re.compile(r"^[a-z_]{1,64}$")


def error_message(exception: SocialAuthBaseException) -> str:
    """A message for our login page. Never echoes provider-supplied free text (it could be forged)."""
    if isinstance(exception, GithubAccessRefused):
        return exception.reason
    provider_code = str(exception.provider_code or "")
    if provider_code in _GITHUB_ERRORS:
        return _GITHUB_ERRORS[provider_code]
    if isinstance(exception, AuthCanceled):
        return _GITHUB_ERRORS["access_denied"]
    if isinstance(exception, AuthConfigurationError) and exception.code == "missing_setting":
        return "Log in with GitHub is not configured on this server."
    if exception.code == "disconnect_disallowed":
        return "GitHub is your only way to log in, so it cannot be unlinked."
    if isinstance(exception, AuthAssociationError):
        return "That GitHub account is already linked to another user of this server."
    if isinstance(exception, AuthSessionError):
        return "The GitHub login expired or was started in another browser. Please try again."
    if isinstance(exception, AuthProviderError) and exception.code in {
        "connection_failed",
        "timeout",
        "unavailable",
    }:
        return "GitHub could not be reached. Please try again later."
    suffix = f" (GitHub said: {provider_code})" if _CODE.match(provider_code) else ""
    return f"The GitHub login failed: {exception}{suffix}"
