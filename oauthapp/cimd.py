"""This server's policy on top of django-oauth-toolkit's Client ID Metadata Documents.

django-oauth-toolkit does the work (oauth2_provider.cimd): it treats an https `client_id` as a
document URL, fetches it through the fetcher named by CIMD_METADATA_FETCHER with an SSRF-safe
connection, size and time limits, caches it by its Cache-Control max-age (within the
CIMD_CACHE_* bounds), keeps the last good copy when a refetch fails, backs off after a failure
and caps concurrent fetches. It persists the client as a public `Application`
(registration_source "cimd").

`MetadataFetcher` (our fetcher) adds what the toolkit lacks:

- a document offering several token endpoint auth methods including `none` (ChatGPT's offers
  `private_key_jwt` and `none`) is taken as a public client; the toolkit refuses anything but
  `none` (its issue #1857);
- the document's redirect URIs follow the registration policy (https, loopback http, allowed
  native schemes; never javascript: and the like);
- with CIMD_ALLOW_LOOPBACK (only with DEBUG=true), documents on 127.0.0.1, localhost
  and [::1], over https or plain http, for local development and the tests;
- the toolkit's own checks after the fetch (the Application's `full_clean`) are tried in the
  fetcher first, and the body is read against the fetch's whole time limit;
- every refusal is logged and remembered briefly (`cimd_failure_record`), so the authorization
  page can tell the user why the application was refused instead of "invalid client_id".
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import ssl
import time
from typing import Any
from urllib.parse import SplitResult, urlsplit

import urllib3
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http.request import validate_host
from django.utils import timezone
from oauth2_provider import cimd as dot_cimd
from oauth2_provider.settings import oauth2_settings

from .models import Application
from .registration import LOOPBACK_HOSTS, MAX_REDIRECT_URIS, redirect_uri_problem

logger = logging.getLogger(__name__)

FAILURE_CACHE_PREFIX = "oauthapp:cimd:failure:"
AUTH_METHODS_SUPPORTED = ("none",)
GRANT_TYPES = {"authorization_code", "refresh_token"}


class DocumentRefused(dot_cimd.CIMDError):
    """A document this server will not use; `public` is the reason as the user may read it."""

    def __init__(self, detail: str, public: str | None = None) -> None:
        super().__init__(detail)
        self.public = public or detail


def loopback_documents_allowed() -> bool:
    return bool(settings.CIMD_ALLOW_LOOPBACK and oauth2_settings.CIMD_ENABLED)


def is_loopback_document_url(client_id: str) -> bool:
    """An http(s) URL on 127.0.0.1, localhost or [::1] (fetched only with CIMD_ALLOW_LOOPBACK)."""
    try:
        parts = urlsplit(client_id)
    except ValueError:
        return False
    return parts.scheme in {"http", "https"} and (parts.hostname or "") in LOOPBACK_HOSTS


def looks_like_document_url(client_id: str) -> bool:
    return client_id[:8].lower() == "https://" or client_id[:7].lower() == "http://"


# --- Failures: logged, and kept as long as the toolkit's backoff so the page can say why ------


def _failure_key(client_id: str) -> str:
    return FAILURE_CACHE_PREFIX + hashlib.sha256(client_id.encode()).hexdigest()


def cimd_failure_record(*, client_id: str, detail: str, public: str) -> None:
    """A client ID metadata document was refused or could not be fetched.

    The one place every CIMD refusal passes through: the log line (with the full detail) and
    the reason the authorization page shows (`public`) for as long as the toolkit backs off.
    Operators find it in the OAuth event log too (kind "client metadata document fetch failed").
    """
    logger.warning("CIMD document refused: %s: %s", client_id[:300], detail)
    from .models import OAuthEvent
    from .services import oauth_event_record

    try:
        with transaction.atomic():  # a savepoint: a failed insert leaves the caller's transaction intact
            oauth_event_record(
                kind=OAuthEvent.Kind.CIMD_FETCH_FAILED,
                client_name=client_id[:255],
                detail={"reason": detail[:500]},
            )
    except Exception:  # the log line above already says it; a refusal must not become a 500
        logger.warning("could not record a CIMD refusal in the event log", exc_info=True)
    try:
        cache.set(_failure_key(client_id), public, oauth2_settings.CIMD_FAILURE_BACKOFF_SECONDS)
    except Exception:  # a cache outage must not turn a refusal into a 500
        logger.warning("could not remember a CIMD refusal in the cache", exc_info=True)


def _failure_forget(*, client_id: str) -> None:
    """A good fetch: an older refusal no longer explains anything."""
    try:
        cache.delete(_failure_key(client_id))
    except Exception:
        logger.warning("could not forget a CIMD refusal in the cache", exc_info=True)


def cimd_failure_reason(*, client_id: str) -> str | None:
    """Why the document at `client_id` was refused lately, if it was."""
    try:
        reason = cache.get(_failure_key(client_id))
    except Exception:
        return None
    return reason if isinstance(reason, str) else None


def refusal_explanation(*, client_id: str) -> str:
    """What the authorization page tells the user when `client_id` was not accepted."""
    disabled = Application.objects.filter(client_id=client_id, disabled_at__isnull=False).exists()
    if disabled:
        return "The server's operator has disabled this application."
    if not looks_like_document_url(client_id):
        return ""
    if not oauth2_settings.CIMD_ENABLED:
        return "This server does not accept client_id URLs (client ID metadata documents)."
    reason = cimd_failure_reason(client_id=client_id)
    if reason:
        return f"This application is described by the document at {client_id[:300]}, and {reason}."
    if client_id[:7].lower() == "http://":
        if is_loopback_document_url(client_id):
            return (
                "A client_id URL must use https; this server fetches http documents from this machine "
                "only when its operator allows it (CIMD_ALLOW_LOOPBACK)."
            )
        return "A client_id URL must use https."
    hosts = oauth2_settings.CIMD_ALLOWED_HOSTS
    host = urlsplit(client_id).hostname or ""
    if hosts and not validate_host(host, hosts):
        return (
            f"This server accepts client ID metadata documents from some hosts only, and {host} is not one."
        )
    return "Its client ID metadata document could not be used just now; try again in a minute."


def _too_slow_reason() -> str:
    seconds = oauth2_settings.CIMD_FETCH_TIMEOUT_SECONDS
    return f"its metadata document did not arrive within {seconds} second{'' if seconds == 1 else 's'}"


def _public_reason(exc: dot_cimd.CIMDError) -> str:
    """The toolkit's fetch errors, said for the user without the connection details."""
    if isinstance(exc, DocumentRefused):
        return exc.public
    detail = str(exc)
    if "timed out" in detail.lower() or "timeout" in detail.lower():
        return _too_slow_reason()
    if detail.startswith(("could not", "client_id host")):
        return "its metadata document could not be fetched (the address is unreachable or not public)"
    return f"its metadata document was refused: {detail}"


# --- The fetcher -----------------------------------------------------------------------------


class _BodyWithDeadline:
    """A fetched response whose body is read against the whole fetch's deadline.

    urllib3's `total` timeout bounds each socket read, not the body: a body trickled a byte at
    a time passes every read in time and would hold the worker for as long as its sender likes.
    Each read here waits at most until the deadline, and past it the document is refused.
    """

    def __init__(self, response: urllib3.BaseHTTPResponse, deadline: float) -> None:
        self.status = response.status
        self.headers = response.headers
        self._response = response
        self._deadline = deadline

    def read(self, amount: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while size < amount:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise DocumentRefused(
                    f"document body not complete within {oauth2_settings.CIMD_FETCH_TIMEOUT_SECONDS}s",
                    _too_slow_reason(),
                )
            sock = getattr(self._response.connection, "sock", None)
            if sock is not None:
                sock.settimeout(remaining)
            chunk = self._response.read1(amount - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)


class MetadataFetcher(dot_cimd.SafeMetadataFetcher):
    """django-oauth-toolkit's SSRF-safe fetcher with this server's document policy."""

    def fetch(self, client_id: str) -> tuple[dict[str, Any], int]:
        self._deadline = time.monotonic() + oauth2_settings.CIMD_FETCH_TIMEOUT_SECONDS
        try:
            if loopback_documents_allowed() and is_loopback_document_url(client_id):
                metadata, max_age = self._fetch_loopback(client_id)
            else:
                metadata, max_age = super().fetch(client_id)
            document = document_normalise(client_id=client_id, metadata=metadata)
            _check_storable(client_id=client_id, document=document)
        except dot_cimd.CIMDError as exc:
            # Always a DocumentRefused from here: it says the refusal is already recorded.
            refused = (
                exc if isinstance(exc, DocumentRefused) else DocumentRefused(str(exc), _public_reason(exc))
            )
            cimd_failure_record(client_id=client_id, detail=str(refused), public=refused.public)
            raise refused from exc
        _failure_forget(client_id=client_id)
        return document, max_age

    def _read_document(self, response: urllib3.BaseHTTPResponse) -> tuple[dict[str, Any], int]:
        # The toolkit's checks (status, JSON, size), with the body read against the deadline.
        document: tuple[dict[str, Any], int] = super()._read_document(
            _BodyWithDeadline(response, self._deadline)
        )
        return document

    def _fetch_loopback(self, client_id: str) -> tuple[dict[str, Any], int]:
        """Fetch from this machine (CIMD_ALLOW_LOOPBACK), with the toolkit's limits."""
        parts = _validated_loopback_url(client_id)
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        timeout = oauth2_settings.CIMD_FETCH_TIMEOUT_SECONDS
        pool_class = urllib3.HTTPSConnectionPool if secure else urllib3.HTTPConnectionPool
        extra: dict[str, Any] = {"ssl_context": ssl.create_default_context()} if secure else {}
        pool = pool_class(
            host=parts.hostname or "127.0.0.1",
            port=port,
            timeout=urllib3.Timeout(connect=timeout, read=timeout, total=timeout),
            retries=False,
            maxsize=1,
            **extra,
        )
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Host": parts.netloc, "Accept": "application/json, application/*+json"}
        try:
            response = pool.urlopen("GET", path, headers=headers, redirect=False, preload_content=False)
            try:
                document: tuple[dict[str, Any], int] = self._read_document(response)
                return document
            finally:
                response.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            raise dot_cimd.CIMDError(f"could not fetch client_id document: {exc}") from exc
        finally:
            pool.close()


def _validated_loopback_url(client_id: str) -> SplitResult:
    parts = urlsplit(client_id)
    try:
        parts.port  # noqa: B018 (an out-of-range port raises here)
    except ValueError as exc:
        raise DocumentRefused("client_id URL has an invalid port", "its client_id URL is malformed") from exc
    if parts.username or parts.password or parts.fragment or not parts.path or parts.path == "/":
        raise DocumentRefused(
            "client_id URL must have a path and no userinfo or fragment", "its client_id URL is malformed"
        )
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(parts.hostname, parts.port or 80)}
    except socket.gaierror as exc:
        raise DocumentRefused(
            f"could not resolve {parts.hostname}", "its client_id host does not resolve"
        ) from exc
    if not all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses):
        raise DocumentRefused(
            f"{parts.hostname} resolves beyond loopback ({sorted(addresses)})",
            "its client_id host does not resolve to this machine",
        )
    return parts


# --- The document policy ---------------------------------------------------------------------


def document_normalise(*, client_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """Check a fetched document against this server's policy; the document the toolkit then uses.

    The toolkit checks the same client_id and shape rules again; here they are checked first so
    that each refusal has a reason the user can read (`DocumentRefused.public`).
    """
    if metadata.get("client_id") != client_id:
        raise DocumentRefused(
            f"document client_id {str(metadata.get('client_id'))[:200]!r} does not match its URL",
            "its metadata document names a different client_id than the URL it was fetched from",
        )
    if "client_secret" in metadata or "client_secret_expires_at" in metadata:
        raise DocumentRefused(
            "the document carries a client_secret", "its metadata document carries a secret"
        )

    method = metadata.get("token_endpoint_auth_method", "none")
    offered = metadata.get("token_endpoint_auth_methods_supported")
    offered_list = [m for m in offered if isinstance(m, str)] if isinstance(offered, list) else []
    if method not in AUTH_METHODS_SUPPORTED:
        if "none" not in offered_list:
            methods = ", ".join(dict.fromkeys(str(m)[:40] for m in [method, *offered_list])) or "none"
            raise DocumentRefused(
                f"no supported token endpoint auth method (offered: {methods})",
                f"it authenticates with {methods}, and this server accepts metadata-document clients "
                "only as public clients (token_endpoint_auth_method none)",
            )
        # The document says it can also be a public client: be one.
        metadata = {**metadata, "token_endpoint_auth_method": "none"}

    redirect_uris = metadata.get("redirect_uris")
    if not isinstance(redirect_uris, list) or not redirect_uris:
        raise DocumentRefused(
            "redirect_uris missing or empty", "its metadata document lists no redirect_uris"
        )
    if len(redirect_uris) > MAX_REDIRECT_URIS:
        raise DocumentRefused(
            f"{len(redirect_uris)} redirect URIs",
            f"its metadata document lists over {MAX_REDIRECT_URIS} redirect_uris",
        )
    for uri in redirect_uris:
        problem = redirect_uri_problem(uri)
        if problem:
            raise DocumentRefused(
                f"redirect URI {str(uri)[:200]!r}: {problem}",
                f"its metadata document lists a redirect URI this server does not allow ({problem})",
            )

    grant_types = metadata.get("grant_types", ["authorization_code"])
    if (
        not isinstance(grant_types, list)
        or "authorization_code" not in grant_types
        or not set(grant_types) <= GRANT_TYPES
    ):
        raise DocumentRefused(
            f"grant_types {str(grant_types)[:200]}",
            "its metadata document's grant_types must be authorization_code, optionally with refresh_token",
        )
    response_types = metadata.get("response_types", ["code"])
    if response_types != ["code"]:
        raise DocumentRefused(
            f"response_types {str(response_types)[:200]}", 'its response_types must be ["code"]'
        )
    name = metadata.get("client_name", "")
    if not isinstance(name, str) or len(name) > 255:
        raise DocumentRefused(
            "client_name not a short string", "its client_name must be a string of at most 255"
        )
    return metadata


def _check_storable(*, client_id: str, document: dict[str, Any]) -> None:
    """What the toolkit does with the document once the fetcher returns it, tried here first.

    The toolkit turns the document into an Application and validates it (`full_clean`) after
    our fetcher has returned, where no refusal is recorded: the page could only say "try again",
    though nothing would change (a client_id URL longer than the column, a redirect URI the
    model refuses). Tried here, such a refusal is recorded with its reason like any other.
    """
    try:
        fields = dot_cimd._build_application_kwargs(document)
    except dot_cimd.CIMDError as exc:
        raise DocumentRefused(str(exc), f"its metadata document was refused: {exc}") from exc
    candidate = Application(
        client_id=client_id,
        client_type=Application.CLIENT_PUBLIC,
        registration_source=Application.RegistrationSource.CIMD,
        **fields,
    )
    try:
        candidate.full_clean(exclude=["client_secret"], validate_unique=False)
    except ValidationError as exc:
        problems = "; ".join(
            f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items()
        )[:500]
        raise DocumentRefused(
            f"invalid client metadata: {problems}",
            f"this server cannot accept the client it describes ({problems})",
        ) from exc


# --- http documents on loopback --------------------------------------------------------------


def loopback_http_application(*, client_id: str, request: Any) -> Application | None:
    """The client for an http://127.0.0.1/... document URL (CIMD_ALLOW_LOOPBACK only).

    The toolkit treats only https URLs as documents, so for these its resolver is never
    reached; this does what it does (fetch when unknown or stale, keep the last good copy when
    a refetch fails) through its own fetch-validate-upsert step, minus the backoff and the
    in-flight cap that a machine's own loopback documents do not need.
    """
    cached = getattr(request, "client", None)
    if isinstance(cached, Application) and cached.client_id == client_id and cached.is_usable(request):
        return cached
    application = Application.objects.filter(client_id=client_id).first()
    stale = (
        application is not None
        and application.registration_source == Application.RegistrationSource.CIMD
        and application.cimd_expires_at is not None
        and timezone.now() > application.cimd_expires_at
    )
    if application is None or stale:
        try:
            application = dot_cimd._fetch_validate_upsert(client_id)
        except dot_cimd.CIMDError as exc:
            if not isinstance(exc, DocumentRefused):
                cimd_failure_record(client_id=client_id, detail=str(exc), public=_public_reason(exc))
    if application is None or not application.is_usable(request):
        return None
    request.client = application
    return application
