"""Site-wide middleware: framing, GitHub login errors, and backend outages as 503s."""

import logging
import sys
from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.db import DataError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import resolve_url
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from social_core.exceptions import SocialAuthBaseException
from social_django.middleware import SocialAuthExceptionMiddleware

from .github import error_message
from .outage import is_outage

LOGIN_ERROR_SESSION_KEY = "oauthapp_login_error"
logger = logging.getLogger(__name__)

# Paths whose clients read RFC 6749 JSON, not pages.
OAUTH_API_PATHS = ("/token", "/register", "/revoke", "/introspect", "/.well-known/")


def outage_response(request: HttpRequest) -> HttpResponse:
    """503 with Retry-After: `temporarily_unavailable` JSON for OAuth clients, a short page for people.

    The page is rendered without the request's context processors, which would touch the
    session (and so the database that may be what is down).
    """
    retry_after = str(settings.OUTAGE_RETRY_AFTER_SECONDS)
    response: HttpResponse
    if request.path.startswith(OAUTH_API_PATHS):
        response = JsonResponse(
            {
                "error": "temporarily_unavailable",
                "error_description": "The server cannot reach its database or cache; try again shortly.",
            },
            status=503,
        )
    else:
        html = render_to_string(
            "oauthapp/unavailable.html",
            {"server_name": settings.MCP_SERVER_NAME, "retry_after": retry_after},
        )
        response = HttpResponse(html, status=503)
    response["Retry-After"] = retry_after
    response["Cache-Control"] = "no-store"
    # The outage was logged once, as a warning (BackendErrorMiddleware); it is not a server bug,
    # so django.request does not log each 503 again as an ERROR.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


def refused_value_response(request: HttpRequest) -> HttpResponse:
    """400 for input the database refuses to store or compare (PostgreSQL: NUL characters)."""
    description = "The request carries a value this server cannot process (a NUL character?)"
    if request.path.startswith(OAUTH_API_PATHS):
        response: HttpResponse = JsonResponse(
            {"error": "invalid_request", "error_description": description}, status=400
        )
    else:
        html = render_to_string(
            "oauthapp/unavailable.html", {"server_name": settings.MCP_SERVER_NAME, "refused": description}
        )
        response = HttpResponse(html, status=400)
    response["Cache-Control"] = "no-store"
    return response


class BackendErrorMiddleware:
    """A database or cache outage raised by a view is a retryable 503; a value the database
    refuses (DataError: a NUL character in a client_id, say, on PostgreSQL) is the request's
    fault, a 400. Neither is a 500 or a traceback."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, DataError):
            logger.warning("%s %s: the database refused a value: %s", request.method, request.path, exception)
            return refused_value_response(request)
        if not is_outage(exception):
            return None
        logger.warning(
            "%s %s: backend unavailable (%s: %s)",
            request.method,
            request.path,
            type(exception).__name__,
            exception,
        )
        return outage_response(request)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: an outage met outside a view (a middleware saving the session) is a 503 too.

    Anything else is a bug: a plain 500 (JSON on the OAuth endpoints) without details.
    """
    error = sys.exc_info()[1]
    if is_outage(error):
        return outage_response(request)
    if isinstance(error, DataError):
        return refused_value_response(request)
    if request.path.startswith(OAUTH_API_PATHS):
        return JsonResponse(
            {"error": "server_error", "error_description": "The server failed; this is logged."}, status=500
        )
    return HttpResponse(
        render_to_string(
            "oauthapp/unavailable.html", {"server_name": settings.MCP_SERVER_NAME, "failed": True}
        ),
        status=500,
    )


class FrameAncestorsMiddleware:
    """Forbid framing of every page (login, consent) in browsers that read CSP, not only XFO."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = "frame-ancestors 'none'"
        return response


def local_path(url: object) -> str | None:
    """`url` if it is a path on this site (e.g. the pending /authorize?...), else None."""
    if not isinstance(url, str) or not url.startswith("/") or url.startswith("//"):
        return None
    return url if url_has_allowed_host_and_scheme(url, allowed_hosts=None) else None


class SocialAuthErrorMiddleware(SocialAuthExceptionMiddleware):
    """A failed or refused GitHub login returns to our login page with the reason.

    The pending `next` (usually the /authorize request of an MCP client) is kept, so the
    user can try again, log in with a password, or deny the client from there. A logged-in
    user who was linking or unlinking GitHub goes back to the connected-apps page with a message.
    """

    @staticmethod
    def _log_error(exception: SocialAuthBaseException, status: int) -> None:
        """GitHub failing (a 5xx or a bad answer from it) is GitHub's outage, not our bug: a
        warning with the reason, no traceback. Failures of our own keep social-auth's log."""
        if getattr(exception, "source", None) == "provider_response":
            logging.getLogger("social").warning(
                "GitHub login failed: GitHub answered badly (code=%s stage=%s status=%s)",
                exception.code,
                exception.stage,
                status,
            )
            return
        SocialAuthExceptionMiddleware._log_error(exception, status)

    def get_error_status(self, request: HttpRequest, exception: SocialAuthBaseException) -> int:
        if exception.code == "missing_setting" and not settings.GITHUB_ENABLED:
            return 404  # someone pressed a GitHub button this server does not offer: not a server fault
        return super().get_error_status(request, exception)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if getattr(request, "social_strategy", None) is None:
            return None
        if not isinstance(exception, SocialAuthBaseException) or self.raise_exception(request, exception):
            return None
        self._log_error(exception, self.get_error_status(request, exception))
        message = error_message(exception)
        if request.user.is_authenticated:
            # Linking or unlinking, which only the connected-apps page offers.
            messages.error(request, message)
            return HttpResponseRedirect(reverse("connected-apps"))
        next_url = local_path(request.session.get("next"))
        if next_url == resolve_url(settings.LOGIN_REDIRECT_URL):
            next_url = None  # social-auth's stand-in for "no next": nothing is pending
        request.session[LOGIN_ERROR_SESSION_KEY] = message
        login_url = reverse("login")
        if next_url:
            login_url += "?" + urlencode({"next": next_url})
        return HttpResponseRedirect(login_url)
