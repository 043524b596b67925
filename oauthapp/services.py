"""Writes for the authorization server: registration, consent, revocation, client state, personal tokens."""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from oauth2_provider.generators import generate_client_id, generate_client_secret
from oauth2_provider.models import AccessToken, Grant, RefreshToken, clear_expired, set_token_value
from social_django.models import UserSocialAuth

from . import encryption, selectors
from .models import Application, Consent, GithubCredential, PersonalAccessToken
from .registration import ClientMetadata

LAST_USED_GRANULARITY_SECONDS = 60


@dataclass(frozen=True)
class RegisteredClient:
    application: Application
    client_secret: str | None

    def response(self, metadata: ClientMetadata) -> dict[str, Any]:
        """The RFC 7591 section 3.2.1 response: registered metadata, nothing unset."""
        body: dict[str, Any] = {
            "client_id": self.application.client_id,
            "client_id_issued_at": int(self.application.created.timestamp()),
            "redirect_uris": metadata.redirect_uris,
            "token_endpoint_auth_method": metadata.token_endpoint_auth_method,
            "grant_types": metadata.grant_types,
            "response_types": metadata.response_types,
            "scope": metadata.scope,
        }
        if self.client_secret is not None:
            body["client_secret"] = self.client_secret
            body["client_secret_expires_at"] = 0
        if metadata.client_name:
            body["client_name"] = metadata.client_name
        body.update(metadata.extra)
        return body


def client_register(*, metadata: ClientMetadata, remote_addr: str | None) -> RegisteredClient:
    """Create a dynamically registered client. The secret is returned once, stored hashed."""
    secret = None if metadata.is_public else generate_client_secret()
    application = Application(
        client_id=generate_client_id(),
        client_secret=secret or secrets.token_urlsafe(48),
        client_type=Application.CLIENT_PUBLIC if metadata.is_public else Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris=" ".join(metadata.redirect_uris),
        name=metadata.client_name,
        registration_source=Application.RegistrationSource.DCR,
        registration_metadata=metadata.stored_metadata(),
        registered_from=remote_addr,
    )
    application.full_clean(exclude=["client_secret"])
    application.save()
    return RegisteredClient(application=application, client_secret=secret)


def consent_record(*, user: User, application: Application, scopes: list[str]) -> Consent:
    """Remember that `user` approved `application` for `scopes` (added to earlier approvals)."""
    with transaction.atomic():
        consent, created = Consent.objects.select_for_update().get_or_create(
            user=user, application=application, defaults={"scope": " ".join(sorted(set(scopes)))}
        )
        if not created:
            consent.scope = " ".join(sorted(consent.scopes | set(scopes)))
            consent.save(update_fields=["scope", "updated"])
    return consent


def tokens_revoke(*, user: User | None = None, application: Application | None = None) -> int:
    """Revoke every token and pending code of a user, a client, or a user on one client.

    Refresh tokens are marked revoked (reuse protection keeps its tombstones); access tokens
    are deleted, which also drops them from the MCP server's token cache. Returns how many
    access tokens died.
    """
    if user is None and application is None:
        raise ValueError("tokens_revoke needs a user, an application or both")
    filters: dict[str, Any] = {}
    if user is not None:
        filters["user"] = user
    if application is not None:
        filters["application"] = application
    now = timezone.now()
    with transaction.atomic():
        RefreshToken.objects.filter(revoked__isnull=True, **filters).update(
            revoked=now, updated=now, access_token=None
        )
        Grant.objects.filter(**filters).delete()
        deleted, _ = AccessToken.objects.filter(**filters).delete()
    return deleted


def consent_revoke(*, user: User, application: Application) -> None:
    """Forget the user's approval of a client and kill its tokens for that user at once."""
    with transaction.atomic():
        Consent.objects.filter(user=user, application=application).delete()
        tokens_revoke(user=user, application=application)


def application_disable(*, application: Application) -> None:
    """Stop a client: its tokens die now and it cannot obtain new ones."""
    with transaction.atomic():
        Application.objects.filter(pk=application.pk).update(disabled_at=timezone.now())
        tokens_revoke(application=application)


def application_enable(*, application: Application) -> None:
    Application.objects.filter(pk=application.pk).update(disabled_at=None)


def client_mark_used(*, application_id: int, user_id: int | None) -> None:
    """Record that a client (and the user's consent for it) was used just now.

    Throttled through the cache so a busy client costs at most one write a minute.
    """
    if not cache.add(
        client_use_key(application_id=application_id, user_id=user_id), 1, LAST_USED_GRANULARITY_SECONDS
    ):
        return
    client_mark_used_now(application_id=application_id, user_id=user_id)


def client_use_key(*, application_id: int, user_id: int | None) -> str:
    """The cache key that throttles `client_mark_used` (async callers check it first)."""
    return f"oauthapp:used:{application_id}:{user_id}"


def client_mark_used_now(*, application_id: int, user_id: int | None) -> None:
    client_mark_used_at(application_id=application_id, user_id=user_id, when=timezone.now())


def client_mark_used_at(*, application_id: int, user_id: int | None, when: datetime) -> None:
    """Move the client's (and the user's consent's) "last used" to `when`."""
    Application.objects.filter(pk=application_id).update(last_used_at=when)
    if user_id is not None:
        Consent.objects.filter(application_id=application_id, user_id=user_id).update(last_used_at=when)


@dataclass(frozen=True)
class PruneReport:
    access_tokens: int
    refresh_tokens: int
    grants: int
    clients: int


def clients_prune_unused(*, unused_days: int, never_used_days: int, now: datetime | None = None) -> int:
    """Delete dynamically registered clients nobody uses; returns how many went.

    A client goes when it was last used more than `unused_days` ago, or never used and
    registered more than `never_used_days` ago (mcp-remote registers afresh on every new
    callback port, so abandoned registrations pile up). A client that still holds an
    unexpired access token or a refresh token that can still be used is kept whatever its
    dates say; manually created clients are never touched.
    """
    now = now or timezone.now()
    refreshable_since = now - timedelta(seconds=settings.REFRESH_TOKEN_LIFETIME)
    stale = Application.objects.filter(registration_source=Application.RegistrationSource.DCR).filter(
        Q(last_used_at__lt=now - timedelta(days=unused_days))
        | Q(last_used_at__isnull=True, created__lt=now - timedelta(days=never_used_days))
    )
    live_access = AccessToken.objects.filter(expires__gt=now).values("application_id")
    live_refresh = RefreshToken.objects.filter(
        revoked__isnull=True, access_token__expires__gt=refreshable_since
    ).values("application_id")
    stale = stale.exclude(pk__in=live_access).exclude(pk__in=live_refresh)
    # Deleting a client cascades to its tokens, grants and consents.
    _, per_model = stale.delete()
    return per_model.get(Application._meta.label, 0)


def expired_prune(*, unused_days: int, never_used_days: int) -> PruneReport:
    """Remove expired tokens and codes (django-oauth-toolkit's clear_expired), then unused clients."""
    before = (AccessToken.objects.count(), RefreshToken.objects.count(), Grant.objects.count())
    clear_expired()
    clients = clients_prune_unused(unused_days=unused_days, never_used_days=never_used_days)
    after = (AccessToken.objects.count(), RefreshToken.objects.count(), Grant.objects.count())
    return PruneReport(
        access_tokens=before[0] - after[0],
        refresh_tokens=before[1] - after[1],
        grants=before[2] - after[2],
        clients=clients,
    )


# --- Personal access tokens --------------------------------------------------------------------

PERSONAL_TOKEN_CLIENT_ID = "personal-access-tokens"
PERSONAL_TOKEN_PREFIX = "mcp_pat_"
# "No expiry" is a date no one reaches (and far enough from year 10000 that no time-zone
# shift overflows it); PersonalAccessToken.never_expires recognises it.
NO_EXPIRY = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class IssuedPersonalToken:
    record: PersonalAccessToken
    token: str  # shown once; only its checksum is stored


def personal_token_application() -> Application:
    """The system client that owns every personal access token (disable it to stop them all).

    Confidential, client-credentials only, with a random secret nobody knows: it can never
    obtain a token at /token or be used at /authorize.
    """
    application, _created = Application.objects.get_or_create(
        client_id=PERSONAL_TOKEN_CLIENT_ID,
        defaults={
            "name": "Personal access token",
            "client_type": Application.CLIENT_CONFIDENTIAL,
            "authorization_grant_type": Application.GRANT_CLIENT_CREDENTIALS,
            "client_secret": secrets.token_urlsafe(48),
            "registration_source": Application.RegistrationSource.MANUAL,
        },
    )
    return application


def personal_token_create(
    *, user: User, name: str, expires_in_days: int | None, now: datetime | None = None
) -> IssuedPersonalToken:
    """Issue a personal access token for `user`: scope mcp, bound to this server (PUBLIC_URL)."""
    now = now or timezone.now()
    expires = NO_EXPIRY if expires_in_days is None else now + timedelta(days=expires_in_days)
    raw = PERSONAL_TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        access_token = AccessToken(
            user=user,
            application=personal_token_application(),
            expires=expires,
            scope=settings.MCP_SCOPE,
            resource=[settings.PUBLIC_URL],
        )
        set_token_value(access_token, raw)
        access_token.save()
        record = PersonalAccessToken.objects.create(
            user=user, name=name, access_token=access_token, expires=expires
        )
    return IssuedPersonalToken(record=record, token=raw)


def personal_token_revoke(*, personal_token: PersonalAccessToken) -> None:
    """Revoke at once: deleting the AccessToken row drops it from the MCP server's token cache."""
    with transaction.atomic():
        PersonalAccessToken.objects.filter(pk=personal_token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if personal_token.access_token_id is not None:
            AccessToken.objects.filter(pk=personal_token.access_token_id).delete()


def personal_tokens_mark_used(*, access_token_ids: Collection[int], when: datetime) -> None:
    """Record that these AccessTokens (some may be personal tokens) were used at `when`.

    For the MCP server to call in batches, off the request path; never moves a time back.
    """
    if not access_token_ids:
        return
    PersonalAccessToken.objects.filter(access_token_id__in=list(access_token_ids)).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=when)
    ).update(last_used_at=when)


# --- GitHub ----------------------------------------------------------------------------------


class GithubNotLinked(Exception):
    """The user has no linked GitHub account (or its token is gone)."""


class GithubUnavailable(Exception):
    """GitHub could not answer with the user's profile; the message says why, for the user."""


def github_token_store(*, social: UserSocialAuth, access_token: str, scope: str) -> GithubCredential:
    """Keep (or replace) the GitHub token of a linked account, encrypted."""
    credential, _created = GithubCredential.objects.update_or_create(
        social=social,
        defaults={"ciphertext": encryption.encrypt(access_token), "scope": scope[:500]},
    )
    return credential


def github_profile_fetch(*, user_id: int) -> dict[str, Any]:
    """The user's GitHub profile, from GET {GITHUB_API_URL}/user with their stored token."""
    credential = selectors.github_credential_for_user(user_id=user_id)
    if credential is None:
        raise GithubNotLinked
    try:
        token = encryption.decrypt(credential.ciphertext)
    except encryption.DecryptionError as exc:
        raise GithubUnavailable(
            "The stored GitHub token can no longer be read (the server's key changed); "
            "log in with GitHub again to renew it."
        ) from exc
    try:
        response = httpx.get(
            f"{settings.GITHUB_API_URL}/user",
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": settings.MCP_SERVER_NAME,
            },
            timeout=settings.GITHUB_API_TIMEOUT,
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:
        raise GithubUnavailable(
            f"GitHub could not be reached ({type(exc).__name__}); try again later."
        ) from exc
    if response.status_code == 401:
        raise GithubUnavailable(
            "GitHub no longer accepts the stored token (it was revoked or expired); "
            "log in with GitHub again to renew it."
        )
    if response.status_code != 200:
        raise GithubUnavailable(f"GitHub answered {response.status_code}; try again later.")
    try:
        profile = response.json()
    except ValueError as exc:
        raise GithubUnavailable("GitHub answered with something that is not JSON.") from exc
    if not isinstance(profile, dict):
        raise GithubUnavailable("GitHub answered with something that is not a profile.")
    return profile
