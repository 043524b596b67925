"""Bearer tokens for the MCP endpoints: the check, its in-memory cache, and the 401/403 answers.

Every request is authenticated, not only the first of a session. A token is looked up by its
SHA-256 checksum (django-oauth-toolkit stores no plaintext) once, and the verdict is then kept
in this worker's memory: the common case costs a dictionary lookup, no thread hop and no
round trip. Revocation still takes effect everywhere at once: whatever ends a token (revoke,
rotation, a family revoked for reuse, a client disabled, a consent revoked, a user
deactivated) drops the entry in this process and publishes the fact on Redis, where every
worker's bus hears it (`signals.py`). While that feed is down the cache is emptied and not
trusted: each request goes to the database until the feed is back. Entries also expire on
their own after MCP_TOKEN_CACHE_SECONDS, for changes made outside this server's code.

Open streams watch their token: revocation ends them at once, expiry at the token's expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone
from oauth2_provider.models import AccessToken

from .identity import SCOPE_KEY, Caller
from .metrics import METRICS
from .wire import (
    ASGIApp,
    BackendUnavailable,
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    header,
    send_json,
    send_unavailable,
)

logger = logging.getLogger(__name__)

NEGATIVE_TTL_SECONDS = 5.0
MAX_ENTRIES = 50_000
# A request waits this long for its token check at most, then gets a retryable 503.
TOKEN_CHECK_TIMEOUT_SECONDS = 10.0

# Token checks that miss the cache run here: a few threads that keep their database
# connection, apart from the thread Django's sync views share.
DB_EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mcp-db")


def token_checksum(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _token_load(checksum: str) -> Caller | None:
    """The caller a token stands for, with its user's permissions, from the database (None:
    unknown, expired or disabled)."""
    close_old_connections()
    try:
        token = (
            AccessToken.objects.select_related("application", "user")
            .filter(token_checksum=checksum, expires__gt=timezone.now())
            .first()
        )
        if token is None or token.user is None or token.application is None:
            return None
        application = token.application
        if getattr(application, "disabled_at", None) is not None or not token.user.is_active:
            return None
        permissions = frozenset(token.user.get_all_permissions())
    finally:
        close_old_connections()
    return Caller(
        user_id=token.user.pk,
        username=token.user.get_username(),
        application_id=application.pk,
        client_id=application.client_id,
        client_name=application.name or "Unknown client",
        scopes=tuple(token.scope.split()),
        token_id=token.pk,
        token_checksum=checksum,
        resources=tuple(token.resource or ()),
        expires_at=token.expires.timestamp(),
        issuer=settings.PUBLIC_URL,
        permissions=permissions,
    )


def _retrieved(task: asyncio.Task[Caller | None]) -> None:
    """Mark a check's outcome as seen: if every waiter gave up, nobody else will look at it."""
    if not task.cancelled():
        task.exception()


@dataclass(slots=True)
class _Entry:
    caller: Caller | None  # None: the token is not valid (remembered briefly)
    until: float  # monotonic


class TokenCache:
    """Token verdicts in memory, dropped at once when a token, user or client ends.

    Lives on the worker's event loop; `forget_*` may be called from any thread.
    """

    def __init__(self, *, ttl: float, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._loading: dict[str, asyncio.Task[Caller | None]] = {}
        self._watchers: dict[str, set[anyio.CancelScope]] = {}
        # Bumped on every invalidation: a load that started before one does not store its result.
        self._epoch = 0
        # False while the revocation feed is down (Redis mode): nothing is kept then.
        self.trusted = True
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # --- reads (event loop) ----------------------------------------------------------------------

    async def lookup(self, checksum: str) -> Caller | None:
        now = time.monotonic()
        self._sweep(now)
        entry = self._entries.get(checksum)
        if entry is not None:
            if entry.until > now and (entry.caller is None or not entry.caller.expired):
                METRICS.token_checks.labels(result="cache_hit").inc()
                return entry.caller
            self._drop(checksum)
        METRICS.token_checks.labels(result="database").inc()
        load = self._loading.get(checksum)
        if load is None:
            # A task of its own, which every caller waits for: one who gives up (its client
            # went away) cancels only its own wait, never the check the others wait for.
            load = asyncio.get_running_loop().create_task(self._load(checksum))
            load.add_done_callback(_retrieved)
            self._loading[checksum] = load
        try:
            return await asyncio.wait_for(asyncio.shield(load), TOKEN_CHECK_TIMEOUT_SECONDS)
        except TimeoutError:
            # The database hangs (it would have failed by now if it were merely down).
            raise BackendUnavailable("The database is not answering") from None

    async def _load(self, checksum: str) -> Caller | None:
        epoch = self._epoch
        try:
            caller = await asyncio.get_running_loop().run_in_executor(DB_EXECUTOR, _token_load, checksum)
        except DatabaseError as exc:
            raise BackendUnavailable("The database is unavailable") from exc
        finally:
            self._loading.pop(checksum, None)
        if self.trusted and epoch == self._epoch:
            self._store(checksum, caller)
        return caller

    def _sweep(self, now: float) -> None:
        """Drop expired verdicts from the front (the oldest stored): O(1) a lookup on average.
        Each verdict lives at most max(ttl, NEGATIVE_TTL_SECONDS), so whatever stays was stored
        within that long: the cache holds what recent traffic needs, not what it once did."""
        entries = self._entries
        while entries:
            checksum, entry = next(iter(entries.items()))
            if entry.until > now:
                return
            del entries[checksum]

    def _store(self, checksum: str, caller: Caller | None) -> None:
        if caller is None:
            until = time.monotonic() + NEGATIVE_TTL_SECONDS
        else:
            until = time.monotonic() + min(self.ttl, max(0.0, caller.expires_at - time.time()))
        self._entries[checksum] = _Entry(caller, until)
        self._entries.move_to_end(checksum)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def _drop(self, checksum: str) -> None:
        self._entries.pop(checksum, None)

    def __len__(self) -> int:
        return len(self._entries)

    # --- streams watching their token ----------------------------------------------------------

    def watch(self, checksum: str, scope: anyio.CancelScope) -> None:
        self._watchers.setdefault(checksum, set()).add(scope)

    def unwatch(self, checksum: str, scope: anyio.CancelScope) -> None:
        scopes = self._watchers.get(checksum)
        if scopes is not None:
            scopes.discard(scope)
            if not scopes:
                del self._watchers[checksum]

    @property
    def watcher_count(self) -> int:
        return sum(len(s) for s in self._watchers.values())

    # --- invalidation ---------------------------------------------------------------------------

    def invalidate(
        self,
        *,
        checksum: str | None = None,
        user_id: int | None = None,
        application_id: int | None = None,
        everything: bool = False,
    ) -> None:
        """Drop matching verdicts and wake the streams that rely on them (thread-safe)."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._invalidate(checksum, user_id, application_id, everything)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._invalidate, checksum, user_id, application_id, everything)

    def _invalidate(
        self, checksum: str | None, user_id: int | None, application_id: int | None, everything: bool
    ) -> None:
        self._epoch += 1
        if everything:
            doomed = list(self._entries)
        elif checksum is not None:
            doomed = [checksum]
        else:
            doomed = [
                key
                for key, entry in self._entries.items()
                if entry.caller is not None
                and (entry.caller.user_id == user_id or entry.caller.application_id == application_id)
            ]
            # Streams whose token is not cached any more are found through their watchers' keys.
            doomed += [key for key in self._watchers if key not in self._entries]
        for key in doomed:
            self._entries.pop(key, None)
            for scope in list(self._watchers.get(key, ())):
                scope.cancel()

    def reset(self, *, trusted: bool) -> None:
        """The revocation feed (re)connected or dropped: whatever was kept may be stale."""
        self.trusted = trusted
        self.invalidate(everything=True)


# One per process; bound to the worker's loop when the worker starts.
TOKEN_CACHE = TokenCache(ttl=settings.MCP_TOKEN_CACHE_SECONDS)
_publisher_lock = threading.Lock()
_publisher: Any = None


def _publish(message: dict[str, Any]) -> None:
    """Tell every worker (Redis mode). Never raises: this runs inside token writes."""
    if not settings.REDIS_URL:
        return
    global _publisher
    try:
        import redis

        from .bus import channel_prefix, pack

        with _publisher_lock:
            if _publisher is None:
                _publisher = redis.Redis.from_url(
                    settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
                )
        _publisher.publish(f"{channel_prefix(settings.REDIS_URL)}revoked", pack(message))
    except Exception as exc:
        # Every worker's feed is down too, then: they have stopped trusting their caches.
        logger.warning("could not publish a token revocation (%s)", type(exc).__name__)


def _announce(message: dict[str, Any], apply: Callable[[], None]) -> None:
    apply()
    _publish(message)


def token_cache_forget(checksum: str) -> None:
    """A token ended: drop its check here and on every worker. Never raises."""
    _announce({"t": checksum}, lambda: TOKEN_CACHE.invalidate(checksum=checksum))


def user_tokens_forget(user_id: int) -> None:
    """A user was deactivated or their permissions changed: every worker drops its checks of
    that user's tokens."""
    _announce({"u": user_id}, lambda: TOKEN_CACHE.invalidate(user_id=user_id))


def application_tokens_forget(application_id: int) -> None:
    """A client was disabled: every worker drops its checks of that client's tokens."""
    _announce({"a": application_id}, lambda: TOKEN_CACHE.invalidate(application_id=application_id))


def all_tokens_forget() -> None:
    """Permissions changed for many users at once (a group's): every worker drops every check."""
    _announce({"e": 1}, lambda: TOKEN_CACHE.invalidate(everything=True))


def apply_revocation(message: dict[str, Any]) -> None:
    """A revocation heard on the bus (possibly our own: invalidating twice is harmless)."""
    if "e" in message:
        TOKEN_CACHE.invalidate(everything=True)
    elif "t" in message:
        TOKEN_CACHE.invalidate(checksum=str(message["t"]))
    elif "u" in message:
        TOKEN_CACHE.invalidate(user_id=int(message["u"]))
    elif "a" in message:
        TOKEN_CACHE.invalidate(application_id=int(message["a"]))


# --- The check --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthFailure:
    status: int
    error: str | None
    description: str
    missing_scopes: tuple[str, ...] = ()


def resource_base(path: str) -> str:
    return "/sse" if path.startswith("/sse") else "/mcp"


def resource_for_path(path: str) -> str:
    """The RFC 8707 resource a request path belongs to (`/sse/message` belongs to `/sse`)."""
    return f"{settings.PUBLIC_URL}{resource_base(path)}"


def resource_metadata_url(path: str) -> str:
    return f"{settings.PUBLIC_URL}/.well-known/oauth-protected-resource{resource_base(path)}"


def required_scopes() -> tuple[str, ...]:
    """What a token needs on the MCP endpoints (MCP_REQUIRED_SCOPES, `mcp` by default)."""
    return tuple(settings.MCP_REQUIRED_SCOPES)


def www_authenticate(failure: AuthFailure, path: str) -> str:
    """The challenge (RFC 6750 section 3, RFC 9728 section 5.1, MCP 2025-06-18 onwards)."""
    parts: list[str] = []
    if failure.error:
        parts.append(f'error="{failure.error}"')
        # A quoted-string of printable ASCII (RFC 6750 section 3): no quote or backslash in it.
        description = "".join(c for c in failure.description if " " <= c <= "~" and c not in '"\\')
        parts.append(f'error_description="{description}"')
    parts.append(f'resource_metadata="{resource_metadata_url(path)}"')
    scopes = failure.missing_scopes or required_scopes()
    parts.append(f'scope="{" ".join(scopes)}"')
    return "Bearer " + ", ".join(parts)


def bearer_from_scope(scope: Scope) -> str | None:
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return ""


def resource_allowed(caller: Caller, path: str) -> bool:
    """A token bound to resources is good for those (an origin-bound one for both endpoints)."""
    if not caller.resources:
        return True
    wanted = resource_for_path(path)
    for resource in caller.resources:
        base = resource.rstrip("/")
        if wanted == base or wanted.startswith(base + "/"):
            return True
    return False


async def authenticate(scope: Scope) -> Caller | AuthFailure:
    """Check the request's bearer token for the MCP resource at scope['path']."""
    if b"access_token=" in scope.get("query_string", b""):
        return AuthFailure(400, "invalid_request", "Send the token in the Authorization header, not the URL")
    raw = bearer_from_scope(scope)
    if raw is None:
        return AuthFailure(401, None, "Authorization needed")
    if not raw:
        return AuthFailure(401, "invalid_request", "Use the Bearer scheme")
    caller = await TOKEN_CACHE.lookup(token_checksum(raw))
    if caller is None:
        return AuthFailure(401, "invalid_token", "The access token is invalid, expired or revoked")
    if not resource_allowed(caller, scope["path"]):
        # Say which resource the token is for: a token minted for another port or path of a
        # development server is the usual cause, and the holder already knows the token.
        bound = " ".join(caller.resources)[:300]
        return AuthFailure(
            401,
            "invalid_token",
            f"The access token is for {bound}, not {resource_for_path(scope['path'])}",
        )
    missing = tuple(s for s in required_scopes() if s not in caller.scopes)
    if missing:
        return AuthFailure(
            403,
            "insufficient_scope",
            f"The access token lacks the scope{'s' if len(missing) > 1 else ''} {' '.join(missing)}",
            missing,
        )
    return caller


def wants_html(scope: Scope) -> bool:
    """A person's browser opened the endpoint (it asks for HTML and sends no token)."""
    accept = header(scope, b"accept") or ""
    return scope["method"] == "GET" and "text/html" in accept


async def refuse(scope: Scope, send: Send, failure: AuthFailure) -> None:
    challenge = www_authenticate(failure, scope["path"])
    headers: Headers = [(b"www-authenticate", challenge.encode())]
    if failure.status == 401 and failure.error is None and wants_html(scope):
        from .pages import endpoint_page

        await endpoint_page(scope, send, headers)
        return
    body = {"error": failure.error or "unauthorized", "error_description": failure.description}
    import json

    await send_json(send, failure.status, json.dumps(body).encode(), headers)


class BearerAuth:
    """ASGI layer: authenticate, put the caller on the scope, keep long requests honest."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            result = await authenticate(scope)
        except BackendUnavailable as exc:
            await send_unavailable(send, str(exc))
            return
        if isinstance(result, AuthFailure):
            METRICS.auth_refusals.labels(status=str(result.status)).inc()
            await refuse(scope, send, result)
            return
        caller = result
        scope = {**scope, SCOPE_KEY: caller, "user": caller.sdk_user}
        await self.app(scope, watched_receive(caller, receive), send)


def watched_receive(caller: Caller, receive: Receive) -> Receive:
    """`receive`, except that a request outliving its token (revoked or expired) sees a
    disconnect, which makes the transport end its response."""
    recheck = float(settings.MCP_AUTH_RECHECK_SECONDS)

    async def guarded() -> Message:
        while True:
            scope = anyio.CancelScope(
                deadline=anyio.current_time() + min(recheck, caller.expires_at - time.time())
            )
            TOKEN_CACHE.watch(caller.token_checksum, scope)
            try:
                with scope:
                    return await receive()
            finally:
                TOKEN_CACHE.unwatch(caller.token_checksum, scope)
            # Woken by a revocation, the token's expiry or the periodic re-check: still good?
            try:
                current = await TOKEN_CACHE.lookup(caller.token_checksum)
            except BackendUnavailable:
                current = caller  # the database is down: keep serving what was already allowed
            if current is None or current.expired:
                logger.info("closing an MCP stream: its token is no longer valid")
                return {"type": "http.disconnect"}

    return guarded
