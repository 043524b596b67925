"""Bearer-token authentication for the MCP endpoints, as ASGI middleware.

Every request is authenticated, not only the first of a session. Tokens are looked up by
checksum (django-oauth-toolkit never stores them in plaintext here), and the result is
cached briefly so that a steady stream of calls does not hit the database per message; a
revoked token's cache entry is dropped at once (`mcpapp.signals`), in every worker when
the cache is Redis.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from oauth2_provider.models import AccessToken
from oauth2_provider.oauth2_validators import validate_resource_as_url_prefix

logger = logging.getLogger(__name__)

CACHE_PREFIX = "mcpapp:token:"
MISSING = "missing"


@dataclass(frozen=True)
class TokenInfo:
    """What the MCP server knows about the caller once its token checks out."""

    checksum: str
    user_id: int
    username: str
    application_id: int
    client_id: str
    client_name: str
    scopes: tuple[str, ...]
    resources: tuple[str, ...]
    expires_at: float

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires_at


@dataclass(frozen=True)
class AuthFailure:
    status: int
    error: str | None
    description: str

    def www_authenticate(self, resource_metadata_url: str) -> str:
        parts = [f'resource_metadata="{resource_metadata_url}"']
        if self.error:
            parts.insert(0, f'error="{self.error}"')
            parts.insert(1, f'error_description="{self.description}"')
        if self.error == "insufficient_scope":
            parts.append(f'scope="{settings.MCP_SCOPE}"')
        return "Bearer " + ", ".join(parts)


def token_checksum(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def token_cache_forget(checksum: str) -> None:
    """Drop a token's cached check. Never raises: it runs inside token writes (revocation,
    rotation), and a cache outage must not turn them into half-done 500s."""
    try:
        cache.delete(CACHE_PREFIX + checksum)
    except Exception:
        logger.warning("could not drop a revoked token from the cache", exc_info=True)


def _token_load(checksum: str) -> TokenInfo | None:
    token = (
        AccessToken.objects.select_related("application", "user")
        .filter(token_checksum=checksum, expires__gt=timezone.now())
        .first()
    )
    if token is None or token.user is None or token.application is None:
        return None
    if token.application.disabled_at is not None or not token.user.is_active:
        return None
    return TokenInfo(
        checksum=checksum,
        user_id=token.user.pk,
        username=token.user.get_username(),
        application_id=token.application.pk,
        client_id=token.application.client_id,
        client_name=token.application.name or "Unknown client",
        scopes=tuple(token.scope.split()),
        resources=tuple(token.resource or ()),
        expires_at=token.expires.timestamp(),
    )


async def token_lookup(raw: str) -> TokenInfo | None:
    """The token's facts, from the cache when fresh, else from the database."""
    checksum = token_checksum(raw)
    key = CACHE_PREFIX + checksum
    cached = await cache.aget(key)
    if cached == MISSING:
        return None
    if isinstance(cached, dict):
        info = TokenInfo(
            **{**cached, "scopes": tuple(cached["scopes"]), "resources": tuple(cached["resources"])}
        )
        return None if info.expired else info
    return await _load_and_remember(checksum)


async def _load_and_remember(checksum: str) -> TokenInfo | None:
    """Read the token from the database and cache the verdict (briefly, and never past expiry)."""
    info = await database_sync_to_async(_token_load)(checksum)
    if info is None:
        await cache.aset(CACHE_PREFIX + checksum, MISSING, 5)
        return None
    ttl = max(1, min(settings.MCP_TOKEN_CACHE_SECONDS, int(info.expires_at - time.time())))
    await cache.aset(CACHE_PREFIX + checksum, asdict(info), ttl)
    return info


def resource_for_path(path: str) -> str:
    """The RFC 8707 resource a request path belongs to (`/sse/message` belongs to `/sse`)."""
    base = "/sse" if path.startswith("/sse") else "/mcp"
    return f"{settings.PUBLIC_URL}{base}"


def resource_metadata_url(path: str) -> str:
    base = "/sse" if path.startswith("/sse") else "/mcp"
    return f"{settings.PUBLIC_URL}/.well-known/oauth-protected-resource{base}"


def bearer_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return ""
    return None


async def authenticate(scope: dict[str, Any]) -> TokenInfo | AuthFailure:
    """Check the request's bearer token for the MCP resource at scope['path']."""
    query = scope.get("query_string", b"").decode("latin-1")
    if "access_token=" in query:
        return AuthFailure(400, "invalid_request", "Send the token in the Authorization header, not the URL")
    raw = bearer_from_headers(scope.get("headers", []))
    if raw is None:
        return AuthFailure(401, None, "Authorization needed")
    if not raw:
        return AuthFailure(401, "invalid_request", "Use the Bearer scheme")
    info = await token_lookup(raw)
    if info is None:
        return AuthFailure(401, "invalid_token", "The access token is invalid, expired or revoked")
    resource = resource_for_path(scope["path"])
    if info.resources and not validate_resource_as_url_prefix(resource, list(info.resources)):
        return AuthFailure(401, "invalid_token", "The access token is not valid for this resource")
    if settings.MCP_SCOPE not in info.scopes:
        return AuthFailure(
            403, "insufficient_scope", f"The access token lacks the {settings.MCP_SCOPE} scope"
        )
    return info


async def token_still_valid(info: TokenInfo) -> bool:
    """Re-check a token that authorised a long-lived stream (cache first, then database)."""
    if info.expired:
        return False
    cached = await cache.aget(CACHE_PREFIX + info.checksum)
    if isinstance(cached, dict):
        return True
    if cached == MISSING:
        return False
    return await _load_and_remember(info.checksum) is not None
