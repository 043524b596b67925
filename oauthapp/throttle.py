"""Who is asking, and how often: the client address, the registration limit, login throttling.

Login throttling is django-axes (AXES_* in settings) with two thresholds: a few failures lock
one username from one address (so a colleague behind the same address is not locked out),
and a higher count of failures from one address, whatever the usernames, locks that address
(password spraying). A locked attempt gets exactly the page a wrong password gets, after the
same password-hashing work, so nobody can tell a locked account from a wrong password.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.exceptions import AxesBackendPermissionDenied
from axes.handlers.database import AxesDatabaseHandler
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models import Sum
from django.http import HttpRequest
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)


def _ip(value: object) -> str | None:
    try:
        return str(ipaddress.ip_address(str(value or "").strip()))
    except ValueError:
        return None


def address_from_meta(meta: Mapping[str, Any]) -> str | None:
    """The client's address: REMOTE_ADDR, or behind our proxy the address it appended last.

    Always an IP address or None: it is stored in IP columns (PostgreSQL's inet refuses
    anything else), and a forwarded header that is not one is ignored.
    """
    if settings.BEHIND_PROXY:
        forwarded = str(meta.get("HTTP_X_FORWARDED_FOR") or "")
        if forwarded:
            address = _ip(forwarded.split(",")[-1])
            if address is not None:
                return address
    return _ip(meta.get("REMOTE_ADDR"))


def client_address(request: HttpRequest) -> str | None:
    """The address of the client that sent `request` (AXES_CLIENT_IP_CALLABLE too)."""
    return address_from_meta(request.META)


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def registration_allowed(*, address: str | None) -> bool:
    """Count one registration from `address`; False once REGISTRATION_RATE_LIMIT is passed.

    The counter lives in the cache. When the cache is down the limit is not enforced (a
    registration flood is a nuisance; refusing every client during an outage is worse).
    """
    limit = settings.REGISTRATION_RATE_LIMIT
    if settings.PUBLIC_IS_LOOPBACK and is_loopback(address):
        # A development server: the developer's own tools register again and again.
        limit = settings.REGISTRATION_LOOPBACK_RATE_LIMIT
    if limit <= 0:
        return True
    window = settings.REGISTRATION_RATE_WINDOW
    key = f"oauthapp:register:{hashlib.sha256((address or '-').encode()).hexdigest()[:32]}"
    try:
        cache.add(key, 0, window)
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, window)
            count = 1
    except (RedisError, OSError) as exc:
        logger.warning("registration rate limit skipped, the cache is unavailable: %s", exc)
        return True
    return count <= limit


class LoginThrottleHandler(AxesDatabaseHandler):
    """axes' database handler with a second, higher threshold for the address alone.

    AXES_LOCKOUT_PARAMETERS is [["username", "ip_address"], "ip_address"], in that order;
    axes compares the largest count with one limit, so the address count is scaled here:
    reaching LOGIN_ADDRESS_FAILURE_LIMIT counts as reaching AXES_FAILURE_LIMIT.
    """

    def get_failures(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> int:
        per_user, per_address = (
            attempts.aggregate(total=Sum("failures_since_start"))["total"] or 0
            for attempts in self.get_user_attempts(request, credentials)
        )
        if per_address >= settings.LOGIN_ADDRESS_FAILURE_LIMIT:
            return max(per_user, settings.AXES_FAILURE_LIMIT)
        return per_user

    def reset_user_attempts(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> int:
        """A successful login forgets that user's own failures from that address only.

        axes would reset every parameter set, the address's too: whoever holds one valid
        account could then clear the spraying count by logging in between guesses.
        """
        per_user = self.filter_user_attempts(request, credentials)[0]
        count, _ = per_user.delete()
        return count


class LoginThrottleBackend(AxesStandaloneBackend):
    """axes' backend, first in AUTHENTICATION_BACKENDS: it refuses a locked login before any
    password is checked. Refusing at once would answer a locked attempt a password hash
    (PBKDF2, most of a login's time) sooner than a wrong password, which tells the two apart;
    so the submitted password is hashed first, as Django's ModelBackend does for a username
    that does not exist.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            super().authenticate(request, username=username, password=password, **kwargs)
        except AxesBackendPermissionDenied:
            if password is not None:
                get_user_model()().set_password(password)
            raise


def login_refused_message() -> str:
    """The one message for a wrong password and a throttled login alike."""
    minutes = max(1, settings.LOGIN_LOCKOUT_SECONDS // 60)
    return (
        "Your username and password didn't match, or there were too many failed attempts "
        f"(logging in then pauses for {minutes} minute{'s' if minutes != 1 else ''}). "
        "Please check them and try again."
    )
