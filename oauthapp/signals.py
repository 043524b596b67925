"""Receivers that hand other apps' events to our services (connected in OAuthAppConfig.ready)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest
from oauth2_provider.signals import app_authorized

from . import services
from .models import OAuthEvent
from .throttle import client_address


@receiver(app_authorized, dispatch_uid="oauthapp-token-issued")
def token_issued(sender: Any, request: HttpRequest, token: Any, **kwargs: Any) -> None:
    """django-oauth-toolkit issued `token` at /token (inside the token view's transaction)."""
    services.token_issued(
        token=token, grant_type=request.POST.get("grant_type", ""), address=client_address(request)
    )


@receiver(user_login_failed, dispatch_uid="oauthapp-login-refused")
def login_refused(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    """A password login failed; axes (whose receiver ran first) flagged it if it was throttled."""
    if request is None:
        return
    throttled = bool(getattr(request, "axes_locked_out", False))
    services.oauth_event_record(
        kind=OAuthEvent.Kind.LOGIN_THROTTLED if throttled else OAuthEvent.Kind.LOGIN_REFUSED,
        username=str(credentials.get("username") or ""),
        address=client_address(request),
        detail={"path": request.path[:200]},
    )
