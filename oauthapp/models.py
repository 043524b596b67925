"""The OAuth client model (swapped in for django-oauth-toolkit's), remembered consent, personal tokens."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
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
