"""Writes for the authorization server: registration, consent, revocation, client state, personal
tokens, events."""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import secrets
import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import close_old_connections, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from oauth2_provider.generators import generate_client_id, generate_client_secret
from oauth2_provider.models import AccessToken, Grant, RefreshToken, clear_expired, set_token_value
from redis.exceptions import RedisError
from social_django.models import UserSocialAuth

from mcpapp.metrics import METRICS

from . import encryption, selectors
from .models import (
    Application,
    Consent,
    GithubCredential,
    OAuthEvent,
    PersonalAccessToken,
    RefreshGrace,
    SpentAuthorizationCode,
)
from .registration import ClientMetadata

LAST_USED_GRANULARITY_SECONDS = 60
# How long a spent authorization code is remembered, so that a replay revokes its tokens.
SPENT_CODE_MEMORY = timedelta(days=1)
logger = logging.getLogger(__name__)


def token_checksum(raw: str) -> str:
    """How django-oauth-toolkit (and this app) find a token without storing it."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


# --- OAuth events ------------------------------------------------------------------------------


def oauth_event_record(
    *,
    kind: str,
    user: User | None = None,
    user_id: int | None = None,
    application: Application | None = None,
    application_id: int | None = None,
    username: str = "",
    client_name: str = "",
    address: str | None = None,
    detail: dict[str, Any] | None = None,
) -> OAuthEvent:
    """Record one OAuth event (`OAuthEvent.Kind`) for operators; the one way to write the log.

    Pass the user and client as objects or ids. The username and client name are copied onto
    the row so it stays readable after either is deleted.
    """
    if kind not in OAuthEvent.Kind.values:
        raise ValueError(f"unknown OAuth event kind {kind!r}")
    if user is not None:
        user_id = user.pk
        username = username or user.get_username()
    elif user_id is not None and not username:
        model = get_user_model()
        username = model.objects.filter(pk=user_id).values_list(model.USERNAME_FIELD, flat=True).first() or ""
    if application is not None:
        application_id = application.pk
        client_name = client_name or application.display_name
    elif application_id is not None and not client_name:
        client_name = (
            Application.objects.filter(pk=application_id).values_list("name", flat=True).first() or ""
        )
    event = OAuthEvent.objects.create(
        kind=kind,
        user_id=user_id,
        application_id=application_id,
        username=username[:150],
        client_name=client_name[:255],
        address=address,
        detail=detail or {},
    )
    METRICS.oauth_events.labels(kind=kind).inc()
    return event


def oauth_events_prune(*, older_than_days: int, now: datetime | None = None) -> int:
    cutoff = (now or timezone.now()) - timedelta(days=older_than_days)
    deleted, _ = OAuthEvent.objects.filter(created__lt=cutoff).delete()
    return deleted


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
    with transaction.atomic():
        application.save()
        oauth_event_record(
            kind=OAuthEvent.Kind.CLIENT_REGISTERED,
            application=application,
            address=remote_addr,
            detail={"redirect_uris": metadata.redirect_uris, "public": metadata.is_public},
        )
    return RegisteredClient(application=application, client_secret=secret)


def consent_record(
    *, user: User, application: Application, scopes: list[str], address: str | None = None
) -> Consent:
    """Remember that `user` approved `application` for `scopes` (added to earlier approvals)."""
    with transaction.atomic():
        consent, created = Consent.objects.select_for_update().get_or_create(
            user=user, application=application, defaults={"scope": " ".join(sorted(set(scopes)))}
        )
        if not created:
            consent.scope = " ".join(sorted(consent.scopes | set(scopes)))
            consent.save(update_fields=["scope", "updated"])
        oauth_event_record(
            kind=OAuthEvent.Kind.CONSENT_GRANTED,
            user=user,
            application=application,
            address=address,
            detail={"scope": " ".join(scopes)},
        )
    return consent


def consent_deny(*, user: User, application: Application, address: str | None) -> None:
    """The user refused `application` on the consent page; nothing is remembered but the event."""
    oauth_event_record(
        kind=OAuthEvent.Kind.CONSENT_DENIED, user=user, application=application, address=address
    )


def tokens_revoke(
    *, user: User | None = None, application: Application | None = None, reason: str = "revoked"
) -> int:
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
        deleted = AccessToken.objects.filter(**filters).delete()[1].get(AccessToken._meta.label, 0)
        oauth_event_record(
            kind=OAuthEvent.Kind.TOKEN_REVOKED,
            user=user,
            application=application,
            detail={"reason": reason, "access_tokens": deleted},
        )
    return deleted


def token_issued(*, token: AccessToken, grant_type: str, address: str | None) -> None:
    """/token issued `token`: the client (and the user's consent) was used now, and operators see it."""
    client_mark_used(application_id=token.application_id, user_id=token.user_id)
    oauth_event_record(
        kind=OAuthEvent.Kind.TOKEN_ISSUED,
        user_id=token.user_id,
        application_id=token.application_id,
        client_name=token.application.display_name if token.application_id else "",
        address=address,
        detail={"grant_type": grant_type, "scope": token.scope},
    )


def consent_revoke(*, user: User, application: Application) -> None:
    """Forget the user's approval of a client and kill its tokens for that user at once."""
    with transaction.atomic():
        Consent.objects.filter(user=user, application=application).delete()
        tokens_revoke(user=user, application=application, reason="the user revoked the app")


def application_disable(*, application: Application) -> None:
    """Stop a client: its tokens die now and it cannot obtain new ones."""
    with transaction.atomic():
        Application.objects.filter(pk=application.pk).update(disabled_at=timezone.now())
        tokens_revoke(application=application, reason="client disabled")


def applications_mark_resource_server(*, applications: QuerySet[Application], allowed: bool) -> int:
    """Let confidential clients introspect tokens (RFC 7662 section 4), or stop them; returns how many."""
    if allowed:
        applications = applications.filter(client_type=Application.CLIENT_CONFIDENTIAL)
    return applications.update(is_resource_server=allowed)


def application_enable(*, application: Application) -> None:
    Application.objects.filter(pk=application.pk).update(disabled_at=None)


def client_mark_used(*, application_id: int, user_id: int | None) -> None:
    """Record that a client (and the user's consent for it) was used just now.

    Throttled through the cache so a busy client costs at most one write a minute.
    """
    try:
        due = cache.add(
            client_use_key(application_id=application_id, user_id=user_id), 1, LAST_USED_GRANULARITY_SECONDS
        )
    except (RedisError, OSError):
        due = True  # the cache only throttles: without it, write (the token endpoint is not hot)
    if due:
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


# --- The token endpoint's guards ----------------------------------------------------------------


def authorization_code_spend(
    *, code: str, application_id: int, user_id: int, refresh_token: str | None, access_token: str
) -> SpentAuthorizationCode:
    """Remember that `code` was exchanged and what the exchange minted (see code replay)."""
    family = None
    if refresh_token:
        family = (
            RefreshToken.objects.filter(token_checksum=token_checksum(refresh_token))
            .values_list("token_family", flat=True)
            .first()
        )
    access_id = (
        AccessToken.objects.filter(token_checksum=token_checksum(access_token))
        .values_list("pk", flat=True)
        .first()
    )
    return SpentAuthorizationCode.objects.create(
        code_checksum=token_checksum(code),
        application_id=application_id,
        user_id=user_id,
        token_family=family,
        access_token_id=access_id,
    )


def authorization_code_replay_revoke(*, spent: SpentAuthorizationCode, address: str | None) -> None:
    """A spent code came back: it leaked, so what it minted dies (RFC 6749 section 4.1.2)."""
    with transaction.atomic():
        if spent.token_family is not None:
            RefreshToken.revoke_family(spent.token_family)
        if spent.access_token_id is not None:
            AccessToken.objects.filter(pk=spent.access_token_id).delete()
        oauth_event_record(
            kind=OAuthEvent.Kind.CODE_REPLAY,
            user_id=spent.user_id,
            application=spent.application,
            address=address,
            detail={"first_used": spent.spent_at.isoformat()},
        )


def refresh_family_revoke(*, refresh_token: RefreshToken, address: str | None, reason: str) -> None:
    """Refresh-token reuse: the whole family of `refresh_token` dies, and operators see why."""
    with transaction.atomic():
        RefreshToken.revoke_family(refresh_token.token_family)
        oauth_event_record(
            kind=OAuthEvent.Kind.REFRESH_REUSE,
            user_id=refresh_token.user_id,
            application_id=refresh_token.application_id,
            address=address,
            detail={"reason": reason},
        )


def refresh_grace_store(*, rotated: RefreshToken, presented: str, token: dict[str, Any]) -> None:
    """Keep what `rotated` (presented as `presented`) was exchanged for, for the grace period."""
    if settings.REFRESH_TOKEN_GRACE_SECONDS <= 0:
        return
    sealed = encryption.seal(
        json.dumps({key: token[key] for key in ("access_token", "refresh_token", "scope") if key in token}),
        passphrase=presented,
    )
    RefreshGrace.objects.update_or_create(refresh_token=rotated, defaults={"ciphertext": sealed})


@dataclass(frozen=True)
class PruneReport:
    access_tokens: int
    refresh_tokens: int
    grants: int
    clients: int
    events: int = 0


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
    now = timezone.now()
    SpentAuthorizationCode.objects.filter(spent_at__lt=now - SPENT_CODE_MEMORY).delete()
    RefreshGrace.objects.filter(
        created__lt=now - timedelta(seconds=settings.REFRESH_TOKEN_GRACE_SECONDS + 60)
    ).delete()
    events = oauth_events_prune(older_than_days=settings.OAUTH_EVENT_RETENTION_DAYS, now=now)
    after = (AccessToken.objects.count(), RefreshToken.objects.count(), Grant.objects.count())
    return PruneReport(
        access_tokens=before[0] - after[0],
        refresh_tokens=before[1] - after[1],
        grants=before[2] - after[2],
        clients=clients,
        events=events,
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
    """Issue a personal access token for `user`: every required scope, bound to this server (PUBLIC_URL)."""
    now = now or timezone.now()
    expires = NO_EXPIRY if expires_in_days is None else now + timedelta(days=expires_in_days)
    raw = PERSONAL_TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        access_token = AccessToken(
            user=user,
            application=personal_token_application(),
            expires=expires,
            scope=" ".join(settings.MCP_REQUIRED_SCOPES),
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
    if settings.GITHUB_ALLOWED_USERS or settings.GITHUB_REQUIRED_ORG:
        users = set(
            PersonalAccessToken.objects.filter(
                access_token_id__in=list(access_token_ids), user__social_auth__provider="github"
            ).values_list("user_id", flat=True)
        )
        if users:
            transaction.on_commit(lambda: github_policy_recheck_soon(user_ids=users))


# --- GitHub ----------------------------------------------------------------------------------


class GithubNotLinked(Exception):
    """The user has no linked GitHub account (or its token is gone)."""


class GithubUnavailable(Exception):
    """GitHub could not answer with the user's profile; the message says why, for the user."""


class GithubTokenRefused(GithubUnavailable):
    """GitHub answered 401 to the stored token: revoked at GitHub, or expired."""


def github_token_store(*, social: UserSocialAuth, access_token: str, scope: str) -> GithubCredential:
    """Keep (or replace) the GitHub token of a linked account, encrypted."""
    credential, _created = GithubCredential.objects.update_or_create(
        social=social,
        # A GitHub login has just passed the access policy: that counts as a check.
        defaults={
            "ciphertext": encryption.encrypt(access_token),
            "scope": scope[:500],
            "policy_checked_at": timezone.now(),
        },
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
        raise GithubTokenRefused(
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


class GithubAccessLost(Exception):
    """The user's GitHub account no longer passes this server's access policy; the message says why."""


def github_policy_applies(*, user: User) -> bool:
    """Whether `user` depends on the GitHub access policy: GitHub is their only way in.

    A user who also has a password logs in without GitHub, so the policy never covered them.
    """
    if not (settings.GITHUB_ALLOWED_USERS or settings.GITHUB_REQUIRED_ORG):
        return False
    if user.has_usable_password():
        return False
    return UserSocialAuth.objects.filter(user_id=user.pk, provider="github").exists()


def _github_org_member(*, token: str, login: str, org: str) -> bool:
    try:
        response = httpx.get(
            f"{settings.GITHUB_API_URL}/orgs/{org}/members/{login}",
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "User-Agent": settings.MCP_SERVER_NAME,
            },
            timeout=settings.GITHUB_API_TIMEOUT,
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:
        raise GithubUnavailable(f"GitHub could not be reached ({type(exc).__name__})") from exc
    if response.status_code == 204:
        return True
    if response.status_code in {302, 403, 404}:
        return False
    raise GithubUnavailable(f"GitHub answered {response.status_code}")


def _not_listed(login: str) -> str | None:
    allowed = settings.GITHUB_ALLOWED_USERS
    if allowed and login.lower() not in allowed:
        return f"The GitHub account @{login} is no longer on this server's list of allowed users."
    return None


def github_policy_recheck(*, user: User, now: datetime | None = None) -> None:
    """Check again, through GitHub's API, that a GitHub user still passes the access policy.

    At most every GITHUB_POLICY_RECHECK_SECONDS per user, except that an account whose last
    known login is not on GITHUB_ALLOWED_USERS (the operator took it off) is asked about at
    once. Raises GithubAccessLost when the account no longer passes (or GitHub refuses the
    stored token: the user revoked this server at GitHub). When GitHub cannot be reached the
    last good check stands for up to GITHUB_POLICY_MAX_UNVERIFIED_SECONDS, after which
    GithubUnavailable is raised; an account known to be off the list is refused meanwhile.
    """
    now = now or timezone.now()
    credential = selectors.github_credential_for_user(user_id=user.pk)
    if credential is None:
        raise GithubAccessLost("No GitHub token is stored for this account; log in with GitHub again.")
    social = credential.social
    known_login = str((social.extra_data or {}).get("login") or "")
    unlisted = _not_listed(known_login) if known_login else None
    checked = credential.policy_checked_at or credential.updated
    login = ""
    if unlisted is None and now - checked < timedelta(seconds=settings.GITHUB_POLICY_RECHECK_SECONDS):
        return
    try:
        token = encryption.decrypt(credential.ciphertext)
        profile = github_profile_fetch(user_id=user.pk)
        login = str(profile.get("login") or "")
        reason = _not_listed(login)
        org = settings.GITHUB_REQUIRED_ORG
        if reason is None and org and not _github_org_member(token=token, login=login, org=org):
            reason = f"The GitHub account @{login} is no longer a member of the {org} organisation."
    except encryption.DecryptionError:
        reason = "The stored GitHub token can no longer be read; log in with GitHub again."
    except GithubTokenRefused:
        reason = "GitHub no longer accepts this server's token for the account; log in with GitHub again."
    except GithubUnavailable as exc:
        if unlisted is not None:
            raise GithubAccessLost(unlisted) from exc
        if now - checked >= timedelta(seconds=settings.GITHUB_POLICY_MAX_UNVERIFIED_SECONDS):
            raise
        logger.warning("GitHub policy check for user %s postponed: %s", user.pk, exc)
        return
    if reason is not None:
        raise GithubAccessLost(reason)
    GithubCredential.objects.filter(pk=credential.pk).update(policy_checked_at=now)
    if login and login != known_login:  # renamed at GitHub: the list is matched against the new name
        extra_data = {**(social.extra_data or {}), "login": login}
        UserSocialAuth.objects.filter(pk=social.pk).update(extra_data=extra_data)


def github_access_withdraw(
    *, user: User, application: Application | None, reason: str, address: str | None, on: str
) -> int:
    """The user no longer passes the GitHub policy: everything that lets them in ends now.

    Every OAuth token (personal access tokens included) and pending code dies, and every
    Django session of theirs ends: the session's auth hash comes from the password field, so
    a fresh unusable password (GitHub is their only way in) logs them out in every browser,
    whatever the session store. Their next way in is a GitHub login, which checks the policy.
    `on` says where the check failed (refresh, authorize, personal token, personal token use).
    """
    with transaction.atomic():
        revoked = tokens_revoke(user=user, reason="GitHub access policy")
        PersonalAccessToken.objects.filter(user=user, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if not user.has_usable_password():
            user.set_unusable_password()
            user.save(update_fields=["password"])
        oauth_event_record(
            kind=OAuthEvent.Kind.GITHUB_POLICY_REFUSED,
            user=user,
            application=application,
            address=address,
            detail={"reason": reason, "on": on},
        )
    return revoked


# The policy re-checks that using a personal token sets off run on one daemon thread, off the
# request path (a daemon: a worker that stops does not wait for GitHub to answer).
_recheck_queue: queue.SimpleQueue[int] = queue.SimpleQueue()
_recheck_lock = threading.Lock()
_recheck_pending: set[int] = set()
_recheck_thread: threading.Thread | None = None


def github_policy_recheck_soon(*, user_ids: Collection[int]) -> None:
    """Re-check, in the background, the GitHub policy of these users whose personal tokens were
    used (each at most every GITHUB_POLICY_RECHECK_SECONDS, as on refresh); a user who no longer
    passes loses everything at once (`github_access_withdraw`).

    Personal tokens are never refreshed and never pass /authorize: without this, one made while
    the user passed would outlive their membership for good.
    """
    global _recheck_thread
    if not (settings.GITHUB_ALLOWED_USERS or settings.GITHUB_REQUIRED_ORG):
        return
    with _recheck_lock:
        fresh = [user_id for user_id in user_ids if user_id not in _recheck_pending]
        _recheck_pending.update(fresh)
        if fresh and (_recheck_thread is None or not _recheck_thread.is_alive()):
            _recheck_thread = threading.Thread(
                target=_github_policy_rechecks, name="github-policy", daemon=True
            )
            _recheck_thread.start()
    for user_id in fresh:
        _recheck_queue.put(user_id)


def _github_policy_rechecks() -> None:
    while True:
        _github_policy_recheck_in_background(_recheck_queue.get())


def _github_policy_recheck_in_background(user_id: int) -> None:
    close_old_connections()
    try:
        user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
        if user is None or not github_policy_applies(user=user):
            return
        try:
            github_policy_recheck(user=user)
        except GithubAccessLost as exc:
            github_access_withdraw(
                user=user,
                application=personal_token_application(),
                reason=str(exc),
                address=None,
                on="personal token use",
            )
        except GithubUnavailable as exc:
            logger.warning("GitHub policy check for user %s (personal token use) failed: %s", user_id, exc)
    except Exception:
        logger.exception("GitHub policy check for user %s (personal token use) failed", user_id)
    finally:
        with _recheck_lock:
            _recheck_pending.discard(user_id)
        close_old_connections()
