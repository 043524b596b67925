"""Reads for the authorization server."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from oauth2_provider.oauth2_backends import _add_iss_to_redirect, get_oauthlib_core
from oauthlib.common import Request as OAuthlibRequest
from oauthlib.oauth2.rfc6749 import errors as oauth_errors
from social_django.models import UserSocialAuth

from .models import Application, Consent, GithubCredential, PersonalAccessToken
from .registration import ClientMetadata

MCP_PATHS = ("/mcp", "/sse")


def resource_identifiers() -> list[str]:
    """Every RFC 8707 resource indicator that names this server.

    The origin itself and each MCP endpoint; a token bound to the origin is good for both
    transports, one bound to `/mcp` only for `/mcp`.
    """
    base = settings.PUBLIC_URL
    return [base, f"{base}/", *(f"{base}{path}" for path in MCP_PATHS)]


def resource_is_known(uri: str) -> bool:
    return uri in resource_identifiers()


def consent_covers(*, user: User, application: Application, scopes: Iterable[str]) -> bool:
    consent = Consent.objects.filter(user=user, application=application).only("scope").first()
    return consent is not None and set(scopes) <= consent.scopes


def consent_list_for_user(*, user: User) -> QuerySet[Consent]:
    return Consent.objects.filter(user=user).select_related("application").order_by("-updated")


def client_registration_duplicate(*, metadata: ClientMetadata, remote_addr: str | None) -> Application | None:
    """An earlier public registration this one repeats exactly, if recent enough to hand back.

    Same address, same metadata (redirect URIs in the same order included), within
    REGISTRATION_REUSE_WINDOW, not disabled. A public client has no secret, so handing its
    client_id out again gives nothing away: the id is in every authorization URL anyway.
    mcp-remote registers a new callback port each time, which is different metadata and so
    still a client of its own.
    """
    window = settings.REGISTRATION_REUSE_WINDOW
    if window <= 0 or not metadata.is_public or not remote_addr:
        return None
    candidates = Application.objects.filter(
        registration_source=Application.RegistrationSource.DCR,
        client_type=Application.CLIENT_PUBLIC,
        registered_from=remote_addr,
        created__gte=timezone.now() - timedelta(seconds=window),
        disabled_at__isnull=True,
        redirect_uris=" ".join(metadata.redirect_uris),
        name=metadata.client_name,
    ).order_by("-created")[:20]
    wanted = metadata.stored_metadata()
    return next((app for app in candidates if app.registration_metadata == wanted), None)


@dataclass(frozen=True)
class PendingAuthorization:
    """An /authorize request waiting for the user to log in, validated as /authorize would."""

    application: Application
    redirect_uri: str
    state: str | None

    def denial_url(self) -> str:
        """The client's validated redirect URI carrying error=access_denied, state and iss."""
        error = oauth_errors.AccessDeniedError(description="The user denied the request", state=self.state)
        separator = "&" if "?" in self.redirect_uri else "?"
        return _add_iss_to_redirect(f"{self.redirect_uri}{separator}{error.urlencoded}", settings.PUBLIC_URL)


def pending_authorization(*, next_url: str) -> PendingAuthorization | None:
    """The authorization request `next_url` (a local /authorize?... path) stands for, if valid.

    Anything else (another path, an unknown client, a redirect URI the client did not
    register, a malformed request) is None: nothing is ever sent to an unvalidated URI.
    """
    parts = urlsplit(next_url or "")
    if parts.scheme or parts.netloc or parts.path != reverse("oauth2_provider:authorize"):
        return None
    query = urlencode(parse_qsl(parts.query, keep_blank_values=True))
    try:
        _scopes, credentials = get_oauthlib_core().server.validate_authorization_request(
            f"{parts.path}?{query}", http_method="GET", body="", headers={}
        )
    except oauth_errors.OAuth2Error:
        return None
    application = Application.objects.filter(client_id=credentials.get("client_id")).first()
    redirect_uri = credentials.get("redirect_uri")
    if application is None or not redirect_uri:
        return None
    return PendingAuthorization(
        application=application, redirect_uri=redirect_uri, state=credentials.get("state")
    )


def resource_server_authenticate(*, request: HttpRequest) -> Application | None:
    """The client authenticated by `request` (HTTP Basic or client_secret_post), if it is an
    enabled, confidential client an operator marked as a resource server; else None."""
    core = get_oauthlib_core()
    body = urlencode([(key, value) for key, value in request.POST.items()])
    oauth_request = OAuthlibRequest(
        request.build_absolute_uri(), http_method="POST", body=body, headers=core.extract_headers(request)
    )
    if not core.server.request_validator.authenticate_client(oauth_request):
        return None
    client = getattr(oauth_request, "client", None)
    if (
        not isinstance(client, Application)
        or not client.is_resource_server
        or client.client_type != Application.CLIENT_CONFIDENTIAL
        or client.disabled_at is not None
    ):
        return None
    return client


@dataclass(frozen=True)
class GithubLink:
    login: str
    linked_at: datetime


def github_link_for_user(*, user: User) -> GithubLink | None:
    social = UserSocialAuth.objects.filter(user=user, provider="github").order_by("-modified").first()
    if social is None:
        return None
    return GithubLink(login=str(social.extra_data.get("login") or social.uid), linked_at=social.created)


def github_credential_for_user(*, user_id: int) -> GithubCredential | None:
    return (
        GithubCredential.objects.filter(social__user_id=user_id, social__provider="github")
        .order_by("-updated")
        .first()
    )


def personal_tokens_for_user(*, user: User) -> QuerySet[PersonalAccessToken]:
    return PersonalAccessToken.objects.filter(user=user).order_by("-created")
