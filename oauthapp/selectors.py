"""Reads for the authorization server."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import QuerySet

from .models import Application, Consent

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


def consent_covers(*, user: AbstractBaseUser, application: Application, scopes: Iterable[str]) -> bool:
    consent = Consent.objects.filter(user=user, application=application).only("scope").first()
    return consent is not None and set(scopes) <= consent.scopes


def consent_list_for_user(*, user: AbstractBaseUser) -> QuerySet[Consent]:
    return Consent.objects.filter(user=user).select_related("application").order_by("-updated")
