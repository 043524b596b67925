"""The OAuth client model (swapped in for django-oauth-toolkit's), remembered consent, personal
tokens, the OAuth event log and the records that guard the token endpoint (spent codes, refresh
grace)."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone
from oauth2_provider.models import AbstractApplication
from oauth2_provider.settings import oauth2_settings

from .registration import native_redirect_allowed


class Application(AbstractApplication):
    """An OAuth client: django-oauth-toolkit's fields plus what operators need to see.

    `registration_metadata` keeps the RFC 7591 fields that have no column of their own
    (client_uri, logo_uri, contacts, software_id, ...) so registration can echo them back.
    A disabled client can neither obtain nor use tokens (`is_usable`).
    """

    registration_metadata = models.JSONField(default=dict, blank=True)
    registered_from = models.GenericIPAddressField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    is_resource_server = models.BooleanField(
        "resource server",
        default=False,
        help_text="May introspect tokens (RFC 7662). Only for resource servers an operator runs.",
    )

    class Meta(AbstractApplication.Meta):
        verbose_name = "OAuth client"
        verbose_name_plural = "OAuth clients"

    def is_usable(self, request: object) -> bool:
        return self.disabled_at is None

    def get_allowed_schemes(self) -> list[str]:
        """http(s), plus the private-use schemes of this client's own allowed native redirects.

        django-oauth-toolkit checks redirect URIs (when saving, and before redirecting) against
        this list; a native app's scheme is allowed only for the client that registered it,
        and only while the operator's NATIVE_REDIRECT_URIS still allows that URI.
        """
        schemes = list(oauth2_settings.ALLOWED_REDIRECT_URI_SCHEMES)
        for uri in self.redirect_uris.split():
            scheme = uri.partition(":")[0].lower()
            if scheme not in schemes and native_redirect_allowed(uri):
                schemes.append(scheme)
        return schemes

    @property
    def display_name(self) -> str:
        return self.name or "Unknown client"


class Consent(models.Model):
    """A user's standing approval of a client for a set of scopes.

    Asking again for scopes already covered skips the consent page; asking for more
    shows it again. Revoking it (connected-apps page) kills the client's tokens.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="consents")
    application = models.ForeignKey(
        settings.OAUTH2_PROVIDER_APPLICATION_MODEL, on_delete=models.CASCADE, related_name="consents"
    )
    scope = models.TextField(help_text="Space-separated scopes the user approved.")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "application"], name="one_consent_per_client")]

    def __str__(self) -> str:
        return f"{self.user} → {self.application}"

    @property
    def scopes(self) -> set[str]:
        return set(self.scope.split())


class GithubCredential(models.Model):
    """The GitHub OAuth token of one linked GitHub account, encrypted at rest.

    It has to be usable (the github_user tool calls GitHub's API with it), so it cannot be
    hashed: it is sealed with a key derived from SECRET_KEY (`oauthapp.encryption`), never
    displayed, and deleted with the GitHub link. social-auth's `extra_data` never holds it.
    """

    social = models.OneToOneField(
        "social_django.UserSocialAuth", on_delete=models.CASCADE, related_name="github_credential"
    )
    ciphertext = models.TextField(editable=False)
    scope = models.CharField(max_length=500, blank=True, help_text="Scopes GitHub granted the token.")
    policy_checked_at = models.DateTimeField(
        null=True, blank=True, help_text="When GitHub last confirmed the account passes the access policy."
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "GitHub credential"

    def __str__(self) -> str:
        return f"GitHub token of {self.social.user} ({self.social.extra_data.get('login', self.social.uid)})"


class PersonalAccessToken(models.Model):
    """A bearer token a user made for a client that cannot log in through a browser (CLIs, CI).

    The token itself is a django-oauth-toolkit AccessToken of the "Personal access token"
    application, stored as its checksum like every token, so the MCP server checks it exactly
    as any other (scope `mcp`, resource PUBLIC_URL: good on /mcp and /sse). This row keeps what
    people need to manage it: a name, its expiry, when it was last used, and its revocation.
    `access_token` becomes empty when the token row goes (revoked, or pruned after expiry).
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="personal_tokens"
    )
    name = models.CharField(max_length=100)
    access_token = models.OneToOneField(
        oauth2_settings.ACCESS_TOKEN_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="personal_token",
    )
    created = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField(help_text="9999-01-01 means the token does not expire.")
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "personal access token"
        ordering = ("-created",)

    def __str__(self) -> str:
        return f"{self.name} ({self.user})"

    @property
    def never_expires(self) -> bool:
        return self.expires.year >= 9999

    def status(self, now: datetime) -> str:
        """active, expired or revoked (a token whose row is gone was revoked with the user's tokens)."""
        if self.revoked_at is not None or (self.access_token_id is None and self.expires > now):
            return "revoked"
        if self.expires <= now:
            return "expired"
        return "active"


class OAuthEvent(models.Model):
    """One thing that happened on the authorization server, for operators to read in admin.

    Rows keep the names they had (username as typed, client name) so they still tell the
    story after the user or the client is deleted. Written through
    `oauthapp.services.oauth_event_record`; pruned by `prune_expired` after
    OAUTH_EVENT_RETENTION_DAYS.
    """

    class Kind(models.TextChoices):
        CLIENT_REGISTERED = "client_registered", "client registered"
        CONSENT_GRANTED = "consent_granted", "consent granted"
        CONSENT_DENIED = "consent_denied", "consent denied"
        TOKEN_ISSUED = "token_issued", "token issued"
        REFRESH_REUSE = "refresh_reuse", "refresh token reuse (family revoked)"
        TOKEN_REVOKED = "token_revoked", "token revoked"
        CODE_REPLAY = "code_replay", "authorization code replayed (its tokens revoked)"
        LOGIN_REFUSED = "login_refused", "login refused"
        LOGIN_THROTTLED = "login_throttled", "login throttled"
        GITHUB_POLICY_REFUSED = "github_policy_refused", "GitHub access policy refused"
        CIMD_FETCH_FAILED = "cimd_fetch_failed", "client metadata document fetch failed"

    kind = models.CharField(max_length=40, choices=Kind.choices)
    created = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    application = models.ForeignKey(
        settings.OAUTH2_PROVIDER_APPLICATION_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    username = models.CharField(max_length=150, blank=True, help_text="As given, even with no such user.")
    client_name = models.CharField(max_length=255, blank=True)
    address = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name = "OAuth event"
        ordering = ("-created",)
        indexes = [models.Index(fields=["kind", "created"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} at {self.created:%Y-%m-%d %H:%M:%S}"


class SpentAuthorizationCode(models.Model):
    """An authorization code that was exchanged, and what it minted.

    django-oauth-toolkit deletes the code's Grant row on exchange; this row remembers the
    code (by checksum) so a replay can be told from a typo and revoke what the first
    exchange issued (RFC 6749 section 4.1.2).
    """

    code_checksum = models.CharField(max_length=64, unique=True)
    application = models.ForeignKey(settings.OAUTH2_PROVIDER_APPLICATION_MODEL, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    token_family = models.UUIDField(null=True, blank=True)
    access_token = models.ForeignKey(
        settings.OAUTH2_PROVIDER_ACCESS_TOKEN_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    spent_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"Authorization code spent at {self.spent_at:%Y-%m-%d %H:%M:%S}"


class RefreshGrace(models.Model):
    """What a rotated refresh token was exchanged for, kept for REFRESH_TOKEN_GRACE_SECONDS.

    Tokens are stored hashed, so a retried refresh could not otherwise be given the tokens
    its first attempt minted. They are sealed under a key derived from the old refresh token
    itself (and SECRET_KEY): only whoever presents that token can open them.
    """

    refresh_token = models.OneToOneField(
        settings.OAUTH2_PROVIDER_REFRESH_TOKEN_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    ciphertext = models.TextField()
    created = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"Refresh grace for RefreshToken #{self.refresh_token_id}"
