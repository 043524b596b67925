"""django-oauth-toolkit's request validator with this server's policies added.

Besides scope narrowing and RFC 8707 resource binding, the token endpoint's guards live
here, where oauthlib consults us: a replayed authorization code revokes what it minted, a
rotated refresh token presented again within REFRESH_TOKEN_GRACE_SECONDS gets the tokens its
first use minted (after that, reuse revokes the family), a GitHub user's refresh re-checks
the GitHub access policy, and every invalid_grant says which problem it was. The token view
runs all of it in one transaction (oauthapp.views.TokenView), so the row locks taken here
serialise concurrent exchanges of one code or one refresh token; the GitHub check, which
waits on GitHub, runs before that transaction (`github_policy_checked_first`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, NoReturn

from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone
from oauth2_provider.models import AccessToken, Grant, RefreshToken
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.scopes import get_scopes_backend
from oauthlib.oauth2.rfc6749 import errors

from . import cimd, encryption, services
from .models import OAuthEvent, RefreshGrace, SpentAuthorizationCode
from .selectors import resource_identifiers, resource_is_known
from .throttle import address_from_meta


def _locked(queryset: QuerySet[Any]) -> QuerySet[Any]:
    """Lock the rows for the token view's transaction (a no-op outside one, and on SQLite)."""
    return queryset.select_for_update() if transaction.get_connection().in_atomic_block else queryset


def _address(request: Any) -> str | None:
    return address_from_meta(getattr(request, "headers", None) or {})


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class MCPOAuth2Validator(OAuth2Validator):
    def validate_scopes(
        self, client_id: str, scopes: list[str], client: Any, request: Any, *args: Any, **kwargs: Any
    ) -> bool:
        """Grant the known subset of what was asked, or the default scopes.

        RFC 6749 section 3.3 lets the server issue a different scope than requested (the
        token response says which). MCP clients that know nothing of our scopes ask for
        `openid profile` or the like; refusing them would break the login for no gain.
        """
        backend = get_scopes_backend()
        available = set(backend.get_available_scopes(application=client, request=request))
        granted = [scope for scope in scopes if scope in available]
        if not granted:
            granted = list(backend.get_default_scopes(application=client, request=request))
        request.scopes = granted
        scopes[:] = granted
        return True

    def validate_redirect_uri(
        self, client_id: str, redirect_uri: str, request: Any, *args: Any, **kwargs: Any
    ) -> bool:
        """The registered URI, and a scheme still allowed: a native app's private-use scheme
        that the operator has since taken out of NATIVE_REDIRECT_URIS is refused up front
        (on our page), not after consent."""
        if not super().validate_redirect_uri(client_id, redirect_uri, request, *args, **kwargs):
            return False
        return redirect_uri.partition(":")[0].lower() in request.client.get_allowed_schemes()

    def _load_application(self, client_id: str, request: Any) -> Any:
        # The toolkit resolves only https document URLs; http ones on loopback are ours
        # (CIMD_ALLOW_LOOPBACK, local development and the tests).
        if (
            isinstance(client_id, str)
            and client_id.startswith("http://")
            and cimd.loopback_documents_allowed()
            and cimd.is_loopback_document_url(client_id)
        ):
            return cimd.loopback_http_application(client_id=client_id, request=request)
        return super()._load_application(client_id, request)

    def _validate_resource_uris(self, request: Any, resources: list[str]) -> None:
        """RFC 8707: a token may be bound only to this server's own resource identifiers."""
        super()._validate_resource_uris(request, resources)
        for resource in resources:
            if not resource_is_known(resource):
                raise errors.CustomOAuth2Error(
                    error="invalid_target",
                    description=(
                        f"Unknown resource {resource[:200]!r}; this server is "
                        f"{' or '.join(resource_identifiers()[2:])}"
                    ),
                    request=request,
                )

    # --- Authorization codes -------------------------------------------------------------------

    def validate_code(
        self, client_id: str, code: str, client: Any, request: Any, *args: Any, **kwargs: Any
    ) -> bool:
        """The code's Grant, locked; each refusal names its reason (a replay also revokes)."""
        grant = _locked(Grant.objects.filter(code=code, application=client)).first()
        if grant is None:
            self._refuse_unknown_code(code, client, request)
        if grant.is_expired():
            raise errors.InvalidGrantError(description="The authorization code has expired.", request=request)
        verifier = request.code_verifier
        if (
            grant.code_challenge
            and grant.code_challenge_method == "S256"
            and isinstance(verifier, str)
            and not hmac.compare_digest(_s256(verifier), grant.code_challenge)
        ):
            raise errors.InvalidGrantError(
                description="The code_verifier does not match the code_challenge (PKCE).", request=request
            )
        return super().validate_code(client_id, code, client, request, *args, **kwargs)

    def _refuse_unknown_code(self, code: str, client: Any, request: Any) -> NoReturn:
        spent = (
            SpentAuthorizationCode.objects.filter(code_checksum=services.token_checksum(code))
            .select_related("application")
            .first()
        )
        if spent is not None:
            services.authorization_code_replay_revoke(spent=spent, address=_address(request))
            raise errors.InvalidGrantError(
                description="The authorization code was already used; the tokens issued for it are revoked.",
                request=request,
            )
        if Grant.objects.filter(code=code).exists():
            raise errors.InvalidGrantError(
                description="The authorization code was issued to another client.", request=request
            )
        raise errors.InvalidGrantError(description="Unknown authorization code.", request=request)

    def confirm_redirect_uri(
        self, client_id: str, code: str, redirect_uri: str, client: Any, *args: Any, **kwargs: Any
    ) -> bool:
        if not super().confirm_redirect_uri(client_id, code, redirect_uri, client, *args, **kwargs):
            raise errors.InvalidGrantError(
                description="The redirect_uri does not match the one of the authorization request.",
                request=kwargs.get("request") or (args[0] if args else None),
            )
        return True

    # --- Refresh tokens ------------------------------------------------------------------------

    def validate_refresh_token(
        self, refresh_token: str, client: Any, request: Any, *args: Any, **kwargs: Any
    ) -> bool:
        checksum = services.token_checksum(refresh_token)
        # Locked: a concurrent refresh with the same token waits here for the first to commit,
        # then finds it rotated and takes the grace path instead of revoking the family.
        rt = (
            _locked(RefreshToken.objects.filter(token_checksum=checksum))
            .order_by(F("revoked").desc(nulls_first=True))
            .first()
        )
        if rt is None:
            raise errors.InvalidGrantError(description="Unknown refresh token.", request=request)
        if rt.application_id != client.pk:
            raise errors.InvalidGrantError(
                description="The refresh token was issued to another client.", request=request
            )
        if rt.revoked is not None:
            grace = self._grace_tokens(rt, refresh_token)
            if grace is not None:
                request.user = rt.user
                request.refresh_token = refresh_token
                request.refresh_token_instance = rt
                request.grace_tokens = grace
                return True
            if AccessToken.objects.filter(source_refresh_token=rt).exists():
                services.refresh_family_revoke(
                    refresh_token=rt, address=_address(request), reason="rotated refresh token used again"
                )
                raise errors.InvalidGrantError(
                    description="The refresh token was already used; every token of its session is revoked.",
                    request=request,
                )
            raise errors.InvalidGrantError(description="The refresh token has been revoked.", request=request)
        if not super().validate_refresh_token(refresh_token, client, request, *args, **kwargs):
            raise errors.InvalidGrantError(description="The refresh token has expired.", request=request)
        self._recheck_github_policy(rt, request)
        return True

    def _grace_tokens(self, rt: RefreshToken, presented: str) -> dict[str, Any] | None:
        """What `rt`'s rotation minted, if that was within the grace period and is still alive."""
        seconds = settings.REFRESH_TOKEN_GRACE_SECONDS
        if seconds <= 0 or rt.revoked is None or rt.revoked <= timezone.now() - timedelta(seconds=seconds):
            return None
        record = RefreshGrace.objects.filter(refresh_token=rt).first()
        if record is None:
            return None
        try:
            minted = json.loads(encryption.unseal(record.ciphertext, passphrase=presented))
        except (encryption.DecryptionError, ValueError):
            return None
        access = AccessToken.objects.filter(
            token_checksum=services.token_checksum(minted.get("access_token", ""))
        ).first()
        successor = RefreshToken.objects.filter(
            token_checksum=services.token_checksum(minted.get("refresh_token", "")), revoked__isnull=True
        ).exists()
        if access is None or not successor or access.is_expired():
            return None
        minted["expires_in"] = max(1, int((access.expires - timezone.now()).total_seconds()))
        return minted

    def _recheck_github_policy(self, rt: RefreshToken, request: Any) -> None:
        user = rt.user
        if user is None or not services.github_policy_applies(user=user):
            return
        checked_first = _github_policy_checked_first.get() or {}
        try:
            if user.pk in checked_first:
                outcome = checked_first[user.pk]
                if outcome is not None:
                    raise outcome
            else:  # not checked before the transaction (the token view always does)
                services.github_policy_recheck(user=user)
        except services.GithubAccessLost as exc:
            services.github_access_withdraw(
                user=user,
                application=rt.application,
                reason=str(exc),
                address=_address(request),
                on="refresh",
            )
            raise errors.InvalidGrantError(description=_ascii(str(exc)), request=request) from exc
        except services.GithubUnavailable as exc:
            raise errors.CustomOAuth2Error(
                error="temporarily_unavailable",
                description="GitHub cannot be reached to confirm your access; try again later.",
                status_code=503,
                request=request,
            ) from exc

    # --- Revocation (RFC 7009) -----------------------------------------------------------------

    def revoke_token(
        self, token: str, token_type_hint: str | None, request: Any, *args: Any, **kwargs: Any
    ) -> None:
        checksum = services.token_checksum(token)
        application_pk = getattr(request.client, "pk", None)
        owner = (
            AccessToken.objects.filter(token_checksum=checksum, application_id=application_pk)
            .values("user_id", "application_id")
            .first()
            or RefreshToken.objects.filter(
                token_checksum=checksum, application_id=application_pk, revoked__isnull=True
            )
            .values("user_id", "application_id")
            .first()
        )
        super().revoke_token(token, token_type_hint, request, *args, **kwargs)
        if owner is not None and application_pk is not None:
            services.oauth_event_record(
                kind=OAuthEvent.Kind.TOKEN_REVOKED,
                user_id=owner["user_id"],
                application=request.client,
                address=_address(request),
                detail={"reason": "revoked by the client (RFC 7009)"},
            )

    # --- Saving tokens -------------------------------------------------------------------------

    def _save_bearer_token(self, token: dict[str, Any], request: Any, *args: Any, **kwargs: Any) -> None:
        grace = getattr(request, "grace_tokens", None)
        if request.grant_type == "refresh_token" and grace is not None:
            # A retry within the grace period: the same tokens again, nothing new stored.
            token.update(grace)
            return
        presented = request.refresh_token if request.grant_type == "refresh_token" else None
        rotated = getattr(request, "refresh_token_instance", None)
        super()._save_bearer_token(token, request, *args, **kwargs)
        if request.grant_type == "authorization_code":
            services.authorization_code_spend(
                code=request.code,
                application_id=request.client.pk,
                user_id=request.user.pk,
                refresh_token=token.get("refresh_token"),
                access_token=token["access_token"],
            )
        elif presented and isinstance(rotated, RefreshToken) and token.get("refresh_token") != presented:
            services.refresh_grace_store(rotated=rotated, presented=presented, token=token)


# The GitHub policy outcome of a refresh's user, found before the token view's transaction
# (`github_policy_checked_first`): by user id, None when they pass, else what to answer with.
_github_policy_checked_first: ContextVar[dict[int, Exception | None] | None] = ContextVar(
    "github_policy_checked_first", default=None
)


@contextmanager
def github_policy_checked_first(*, refresh_token: str | None) -> Iterator[None]:
    """Re-check the GitHub policy of the user a refresh token belongs to now, before the token
    view opens its transaction, and let the validator use the outcome inside it.

    The check may ask GitHub twice (GITHUB_API_TIMEOUT each); inside the transaction it would
    hold the refresh token's row lock that long, and on SQLite every database write. The token
    is looked up here without a lock; whatever happens to it meanwhile (a concurrent rotation)
    the validator still decides under the lock, with this outcome for its user, and a refusal
    is still answered only once the client has authenticated and the token is found valid.
    """
    outcomes: dict[int, Exception | None] = {}
    if refresh_token:
        rt = (
            RefreshToken.objects.filter(
                token_checksum=services.token_checksum(refresh_token), revoked__isnull=True
            )
            .select_related("user")
            .first()
        )
        user = rt.user if rt is not None else None
        if user is not None and services.github_policy_applies(user=user):
            try:
                services.github_policy_recheck(user=user)
                outcomes[user.pk] = None
            except (services.GithubAccessLost, services.GithubUnavailable) as exc:
                outcomes[user.pk] = exc
    reset = _github_policy_checked_first.set(outcomes)
    try:
        yield
    finally:
        _github_policy_checked_first.reset(reset)


def _ascii(text: str) -> str:
    """error_description allows printable ASCII without quote and backslash (RFC 6749 section 5.2)."""
    return "".join(ch if 0x20 <= ord(ch) <= 0x7E and ch not in '"\\' else "?" for ch in text)
