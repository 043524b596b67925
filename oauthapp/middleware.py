import logging
from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import resolve_url
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from social_core.exceptions import SocialAuthBaseException
from social_django.middleware import SocialAuthExceptionMiddleware

from .github import error_message

LOGIN_ERROR_SESSION_KEY = "oauthapp_login_error"


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
