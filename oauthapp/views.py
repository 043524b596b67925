"""The authorization server's HTTP surface. Views parse, call a service, serialise."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import BadRequest, RequestDataTooBig, TooManyFieldsSent
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from oauth2_provider import views as dot_views
from oauth2_provider.exceptions import FatalClientError, OAuthToolkitError
from oauth2_provider.http import OAuth2ResponseRedirect
from oauth2_provider.oauth2_backends import _add_iss_to_redirect
from oauth2_provider.views.introspect import IntrospectTokenView
from oauthlib.oauth2.rfc6749 import errors as oauth_errors
from oauthlib.oauth2.rfc6749.errors import CustomOAuth2Error

from mcpapp import selectors as mcp_selectors

from . import cimd, selectors, services
from .forms import LoginForm, PersonalTokenForm
from .middleware import LOGIN_ERROR_SESSION_KEY
from .models import Application, PersonalAccessToken
from .registration import LOOPBACK_HOSTS, RegistrationError, parse_client_metadata
from .throttle import client_address, registration_allowed
from .validators import github_policy_checked_first

# The grants this server offers; any other grant_type is unsupported_grant_type (RFC 6749 5.2).
OFFERED_GRANT_TYPES = ("authorization_code", "refresh_token")


class AuthenticatedRequest(HttpRequest):
    """The request a login_required view (or a view behind DOT's login check) receives."""

    user: User


def oauth_error(error: str, description: str, status: int = 400, **headers: str) -> JsonResponse:
    """An RFC 6749 section 5.2 style error body."""
    response = JsonResponse({"error": error, "error_description": description}, status=status)
    response["Cache-Control"] = "no-store"
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def form_body_refusal(request: HttpRequest) -> HttpResponse | None:
    """A form-encoded OAuth request body that cannot be read, as an RFC 6749 error (else None).

    Too large (OAUTH_MAX_BODY_BYTES), too many fields (DATA_UPLOAD_MAX_NUMBER_FIELDS) or a
    broken multipart body would otherwise meet Django's HTML 400 page.
    """
    limit = settings.OAUTH_MAX_BODY_BYTES
    too_large = oauth_error("invalid_request", f"The request body is limited to {limit} bytes", status=413)
    length = request.META.get("CONTENT_LENGTH") or "0"
    if not length.isdigit() or int(length) > limit:
        return too_large
    try:
        if len(request.body) > limit:  # a chunked body has no Content-Length to check
            return too_large
        request.POST  # noqa: B018 (parsed here, where its errors can be answered)
    except RequestDataTooBig:
        return too_large
    except TooManyFieldsSent:
        return oauth_error("invalid_request", "The request body has too many fields")
    except (MultiPartParserError, BadRequest) as exc:  # BadRequest: a form body not in UTF-8
        return oauth_error("invalid_request", f"The request body is not a valid form ({exc})"[:200])
    return None


class JsonMethodNotAllowed:
    """A wrong HTTP method on an OAuth endpoint is an RFC 6749 style JSON error too."""

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        allowed = ", ".join(m.upper() for m in self.http_method_names if hasattr(self, m))  # type: ignore[attr-defined]
        return oauth_error("invalid_request", f"Use {allowed}", status=405, Allow=allowed)


def github_policy_gate(
    request: HttpRequest, *, on: str, next_url: str, client_id: str = ""
) -> HttpResponse | None:
    """For a logged-in user whose only way in is GitHub, re-check the GitHub access policy (at
    most every GITHUB_POLICY_RECHECK_SECONDS, as on refresh) before anything is issued to them.

    None when they pass. Refused: everything of theirs ends (`github_access_withdraw`: tokens,
    personal tokens, sessions), and this browser lands on the login page, which says why (with
    `next`, so that someone else can log in and go on). GitHub unreachable for longer than
    GITHUB_POLICY_MAX_UNVERIFIED_SECONDS: a 503 page, and nothing changes.
    """
    user = request.user
    if not isinstance(user, User) or not services.github_policy_applies(user=user):
        return None
    try:
        services.github_policy_recheck(user=user)
    except services.GithubAccessLost as exc:
        services.github_access_withdraw(
            user=user,
            application=Application.objects.filter(client_id=client_id).first() if client_id else None,
            reason=str(exc),
            address=client_address(request),
            on=on,
        )
        logout(request)
        request.session[LOGIN_ERROR_SESSION_KEY] = str(exc)
        return redirect_to_login(next_url)
    except services.GithubUnavailable:
        response = render(request, "oauthapp/unavailable.html", {"github_unreachable": True}, status=503)
        response["Retry-After"] = str(settings.OUTAGE_RETRY_AFTER_SECONDS)
        response["Cache-Control"] = "no-store"
        response._has_been_logged = True  # type: ignore[attr-defined]  # GitHub's outage, not our bug
        return response
    return None


# --- Discovery -------------------------------------------------------------------------------


class AuthorizationServerMetadataView(dot_views.OAuthServerMetadataView):
    """RFC 8414, built by django-oauth-toolkit from PUBLIC_URL; we add what MCP clients need."""

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().get(request, *args, **kwargs)
        data = json.loads(response.content)
        data["registration_endpoint"] = f"{settings.PUBLIC_URL}/register"
        data["code_challenge_methods_supported"] = ["S256"]
        data["revocation_endpoint_auth_methods_supported"] = [
            "none",
            "client_secret_basic",
            "client_secret_post",
        ]
        data["introspection_endpoint_auth_methods_supported"] = ["client_secret_basic", "client_secret_post"]
        data["service_documentation"] = f"{settings.PUBLIC_URL}/"
        fresh = JsonResponse(data)
        fresh["Access-Control-Allow-Origin"] = "*"
        return fresh


class ProtectedResourceMetadataView(dot_views.OAuthProtectedResourceMetadataView):
    """RFC 9728: the resource is named from PUBLIC_URL, never from the Host header."""

    def get_resource(self, request: HttpRequest) -> str:
        suffix = (self.kwargs.get("resource_path") or "").strip("/")
        return f"{settings.PUBLIC_URL}/{suffix}" if suffix else settings.PUBLIC_URL

    def get_authorization_servers(self, request: HttpRequest) -> list[str]:
        return [settings.PUBLIC_URL]

    def get_scopes_supported(self) -> list[str]:
        # The minimal scopes the MCP endpoints need (what clients should ask for), not every
        # scope the authorization server knows.
        return list(settings.MCP_REQUIRED_SCOPES)

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        suffix = (kwargs.get("resource_path") or "").strip("/")
        if suffix and f"/{suffix}" not in selectors.MCP_PATHS:
            return oauth_error("not_found", "No protected resource at that path", status=404)
        return super().get(request, *args, **kwargs)


# --- Registration (RFC 7591) -------------------------------------------------------------------


@method_decorator(csrf_exempt, name="dispatch")
class RegisterView(JsonMethodNotAllowed, View):
    """Open dynamic client registration, as MCP requires, behind a size cap and a rate limit."""

    http_method_names = ["post", "options"]

    def post(self, request: HttpRequest) -> HttpResponse:
        limit = settings.REGISTRATION_MAX_BODY_BYTES
        too_large = oauth_error(
            "invalid_client_metadata", f"The registration body is limited to {limit} bytes", status=413
        )
        length = request.META.get("CONTENT_LENGTH") or "0"
        if not length.isdigit() or int(length) > limit:
            return too_large
        address = client_address(request)
        # A chunked body has no Content-Length to check: read one byte past the cap to know.
        body = request.read(limit + 1)
        if len(body) > limit:
            return too_large
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: deeply nested arrays fit the cap
            return oauth_error("invalid_client_metadata", "The request body must be a JSON object")
        try:
            metadata = parse_client_metadata(data)
        except RegistrationError as exc:
            return oauth_error(exc.error, exc.description)
        # A registration that repeats an earlier one gets that client back and creates nothing,
        # so it does not count against the limit: one busy address (claude.ai's backends) that
        # registers the same client for many users is not throttled for it.
        existing = selectors.client_registration_duplicate(metadata=metadata, remote_addr=address)
        if existing is not None:
            client = services.RegisteredClient(application=existing, client_secret=None)
        elif not registration_allowed(address=address):
            return oauth_error(
                "invalid_request",
                "Too many registrations from this address; try again later",
                status=429,
                Retry_After=str(settings.REGISTRATION_RATE_WINDOW),
            )
        else:
            client = services.client_register(metadata=metadata, remote_addr=address)
        # 201 for a handed-back client too: RFC 7591 defines no other success, and clients check it.
        response = JsonResponse(client.response(metadata), status=201)
        response["Cache-Control"] = "no-store"
        return response


# --- Authorization -----------------------------------------------------------------------------

STALE_REGISTRATION_ERRORS = (oauth_errors.InvalidClientIdError, oauth_errors.MismatchingRedirectURIError)


class AuthorizeView(dot_views.AuthorizationView):
    """The authorization endpoint and consent page.

    The request is validated before anyone is asked to log in, so a bad client or redirect
    URI is shown on our page and never redirected. Consent is remembered per user, client
    and scope: a request covered by an earlier approval skips the page.
    """

    template_name = "oauthapp/consent.html"

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        self.oauth2_data: dict[str, Any] = {}
        self.validated: tuple[list[str], dict[str, Any]] | None = None
        if request.method == "GET":
            try:
                scopes, credentials = self.validate_authorization_request(request)
            except OAuthToolkitError as error:
                return self.error_response(error, application=None)
            self.validated = (scopes, credentials)
            # oauthlib accepts "plain" (the default when the method is omitted) and DOT refuses it
            # only when the code is minted, after login and consent; refuse it before either.
            if credentials.get("code_challenge_method") != "S256":
                return self._redirect_error(
                    credentials, "invalid_request", 'code_challenge_method must be "S256"'
                )
            unknown = [r for r in request.GET.getlist("resource") if not selectors.resource_is_known(r)]
            if unknown:
                return self._invalid_target(credentials, unknown[0])
        # Before a code is issued or the consent page shown: a GitHub user who no longer passes
        # the policy gets neither, though an approval is remembered and the browser logged in.
        refusal = github_policy_gate(
            request,
            on="authorize",
            next_url=request.get_full_path(),
            client_id=request.GET.get("client_id") or request.POST.get("client_id") or "",
        )
        if refusal is not None:
            return refusal
        return super().dispatch(request, *args, **kwargs)

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # Validated once in dispatch(), before the login check.
        assert self.validated is not None
        scopes, credentials = self.validated
        application = Application.objects.get(client_id=credentials["client_id"])
        assert isinstance(request.user, User)  # DOT's dispatch sent anyone else to the login page
        if selectors.consent_covers(user=request.user, application=application, scopes=scopes):
            resources = request.GET.getlist("resource")
            if resources:
                credentials["resource"] = resources
            try:
                # The base class's: an approval remembered is not a consent given again.
                uri, _headers, _body, _status = dot_views.AuthorizationView.create_authorization_response(
                    self, request=request, scopes=" ".join(scopes), credentials=credentials, allow=True
                )
            except OAuthToolkitError as error:
                return self.error_response(error, application)
            return self.redirect(uri, application)
        return super().get(request, *args, **kwargs)

    def form_valid(self, form: Any) -> HttpResponse:
        # The consent form's client_id and redirect_uri are hidden fields a user can edit. An
        # approval is validated again by oauthlib, but a denial is not: without this check a
        # Deny would send the browser to whatever redirect_uri was posted.
        client_id = form.cleaned_data.get("client_id") or ""
        application = Application.objects.filter(client_id=client_id).first()
        if application is None:
            return self.error_response(
                FatalClientError(error=oauth_errors.InvalidClientIdError()), application=None
            )
        if not application.redirect_uri_allowed(form.cleaned_data.get("redirect_uri") or ""):
            return self.error_response(
                FatalClientError(error=oauth_errors.MismatchingRedirectURIError()), application
            )
        resources = (form.cleaned_data.get("resource") or "").split()
        unknown = [r for r in resources if not selectors.resource_is_known(r)]
        if unknown:
            return self._invalid_target(form.cleaned_data, unknown[0])
        return super().form_valid(form)

    def create_authorization_response(
        self, request: HttpRequest, scopes: str, credentials: dict[str, Any], allow: bool
    ) -> tuple[str, dict[str, str], str, int]:
        """The user answered the consent page: remember an approval once the code is minted."""
        application = Application.objects.get(client_id=credentials["client_id"])
        assert isinstance(request.user, User)  # the consent page is only for a logged-in user
        if not allow:
            services.consent_deny(user=request.user, application=application, address=client_address(request))
            return super().create_authorization_response(request, scopes, credentials, allow)
        with transaction.atomic():
            result = super().create_authorization_response(request, scopes, credentials, allow)
            services.consent_record(
                user=request.user,
                application=application,
                scopes=scopes.split(),
                address=client_address(request),
            )
        return result

    def render_to_response(self, context: dict[str, Any], **response_kwargs: Any) -> HttpResponse:
        # An unknown client_id or redirect URI is most often a client's stored registration
        # from another server or an older database: the error page says how to drop it.
        context["stale_registration"] = isinstance(context.get("error"), STALE_REGISTRATION_ERRORS)
        return super().render_to_response(context, **response_kwargs)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        redirect_uri = context.get("redirect_uri") or ""
        parts = urlsplit(redirect_uri)
        web = parts.scheme in {"http", "https"}
        context["redirect_host"] = (
            (parts.netloc if web else f"{parts.scheme}://{parts.netloc}") if redirect_uri else ""
        )
        # The spec's security considerations: a code that goes to this machine only (loopback, or
        # a native app's scheme) reaches whatever program listens there; say so.
        context["redirect_is_local"] = bool(redirect_uri) and (not web or parts.hostname in LOOPBACK_HOSTS)
        application = context.get("application")
        if (
            isinstance(application, Application)
            and application.registration_source == Application.RegistrationSource.CIMD
        ):
            context["client_host"] = urlsplit(application.client_id).netloc
        user = self.request.user
        if user.is_authenticated:
            # What the approval lets the client do: the tools this user may call, as the MCP
            # server describes them (title, whether they change anything).
            context["tools"] = mcp_selectors.tools_for_user(user_id=user.pk)
        context["server_icon_url"] = mcp_selectors.server_icon_url()
        return context

    def error_response(self, error: OAuthToolkitError, application: Any, **kwargs: Any) -> HttpResponse:
        kwargs.setdefault("client_problem", self._client_problem(error))
        return super().error_response(error, application, **kwargs)

    def _client_problem(self, error: OAuthToolkitError) -> str:
        """Why the client was refused, when oauthlib's one-line error does not say it."""
        client_id = self.request.GET.get("client_id") or self.request.POST.get("client_id") or ""
        oauthlib_error = error.oauthlib_error
        if isinstance(oauthlib_error, oauth_errors.InvalidClientIdError) and client_id:
            return cimd.refusal_explanation(client_id=client_id)
        if isinstance(oauthlib_error, oauth_errors.MismatchingRedirectURIError):
            known = Application.objects.filter(
                client_id=client_id, registration_source=Application.RegistrationSource.CIMD
            ).exists()
            if known:
                return (
                    "The redirect_uri is not one of the redirect_uris in the application's metadata "
                    f"document ({client_id[:300]})."
                )
        return ""

    def redirect(self, redirect_to: str, application: Application | None) -> HttpResponse:
        # RFC 9207: every authorization response carries `iss`, errors (Deny) included.
        if redirect_to and "://" in redirect_to:
            redirect_to = _add_iss_to_redirect(redirect_to, settings.PUBLIC_URL)
        return super().redirect(redirect_to, application)

    def _invalid_target(self, credentials: Any, resource: str) -> HttpResponse:
        return self._redirect_error(credentials, "invalid_target", f"Unknown resource {resource[:200]!r}")

    def _redirect_error(self, credentials: Any, error: str, description: str) -> HttpResponse:
        """An error sent back to the (already validated) redirect URI with state and iss."""
        toolkit_error = OAuthToolkitError(
            error=CustomOAuth2Error(error=error, description=description, state=credentials.get("state")),
            redirect_uri=credentials.get("redirect_uri"),
        )
        application = Application.objects.filter(client_id=credentials.get("client_id")).first()
        return self.error_response(toolkit_error, application)


@method_decorator(csrf_exempt, name="dispatch")
class TokenView(JsonMethodNotAllowed, dot_views.TokenView):
    """The token endpoint: only the grants we offer, and each request all or nothing.

    The whole exchange runs in one transaction: a request that fails on the way (the
    database or cache went away) stores nothing, so its code or refresh token still works
    for the retry; the validator's row locks serialise concurrent uses of one code or token.
    A refresh's GitHub policy check, which waits on GitHub, is made just before it.
    What happens after a token is issued (client last used, the event) is the
    `app_authorized` receiver's (oauthapp.signals), inside the same transaction.
    """

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        refusal = form_body_refusal(request)
        if refusal is not None:
            return refusal
        grant_type = request.POST.get("grant_type")
        if not grant_type:
            return oauth_error("invalid_request", "grant_type is required")
        if grant_type not in OFFERED_GRANT_TYPES:
            return oauth_error(
                "unsupported_grant_type",
                f"This server offers the {' and '.join(OFFERED_GRANT_TYPES)} grants only",
            )
        refresh_token = request.POST.get("refresh_token") if grant_type == "refresh_token" else None
        with github_policy_checked_first(refresh_token=refresh_token), transaction.atomic():
            response = self.authorization_flow_token_response(request)
        # Errors raised while saving the token (our RFC 8707 invalid_target among them) reach
        # DOT's backend outside oauthlib's handler and come back without a Content-Type.
        response["Content-Type"] = "application/json"
        response["Cache-Control"] = "no-store"
        response["Pragma"] = "no-cache"
        if response.status_code == 503:  # temporarily_unavailable (GitHub could not be asked)
            response["Retry-After"] = str(settings.OUTAGE_RETRY_AFTER_SECONDS)
            response._has_been_logged = True  # an outage, not a bug
        return response


@method_decorator(csrf_exempt, name="dispatch")
class RevokeView(JsonMethodNotAllowed, dot_views.RevokeTokenView):
    """RFC 7009 revocation, with the body checks of the token endpoint."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        refusal = form_body_refusal(request)
        if refusal is not None:
            return refusal
        with transaction.atomic():
            return super().post(request, *args, **kwargs)


@method_decorator(csrf_exempt, name="dispatch")
class IntrospectView(JsonMethodNotAllowed, View):
    """RFC 7662 introspection, for resource servers only (RFC 7662 section 4).

    A client may introspect only when an operator marked it a resource server in admin; any
    other caller, registered or not, gets 401 invalid_client and learns nothing of the token.
    """

    http_method_names = ["post", "options"]

    def post(self, request: HttpRequest) -> HttpResponse:
        refusal = form_body_refusal(request)
        if refusal is not None:
            return refusal
        if selectors.resource_server_authenticate(request=request) is None:
            return oauth_error(
                "invalid_client",
                "Only resource servers known to this server may introspect tokens",
                status=401,
                WWW_Authenticate='Basic realm="introspection"',
            )
        token = request.POST.get("token")
        response = IntrospectTokenView.get_token_response(token)
        response["Cache-Control"] = "no-store"
        return response


# --- Pages -------------------------------------------------------------------------------------


class LoginView(auth_views.LoginView):
    """Username + password, or GitHub; names the MCP client waiting, and lets the user deny it."""

    template_name = "registration/login.html"
    redirect_authenticated_user = True
    form_class = LoginForm

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        pending = selectors.pending_authorization(next_url=context.get("next") or "")
        context["pending_client"] = pending.application.display_name if pending else ""
        context["login_error"] = self.request.session.pop(LOGIN_ERROR_SESSION_KEY, "")
        return context


class LogoutView(auth_views.LogoutView):
    """POST logs out (CSRF-protected, as Django requires). A GET, say /logout typed in the
    address bar, gets a page with the log-out button rather than a blank 405."""

    http_method_names = ["get", "post", "options"]

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return render(request, "registration/logout_confirm.html")


@require_POST
def login_deny(request: HttpRequest) -> HttpResponse:
    """Deny the waiting MCP client from the login page: it gets error=access_denied, state and iss.

    Only a request that validates as /authorize would (known client, registered redirect
    URI) is answered with a redirect; anything else stays on our page.
    """
    pending = selectors.pending_authorization(next_url=request.POST.get("next", ""))
    if pending is None:
        request.session[LOGIN_ERROR_SESSION_KEY] = (
            "That authorization request is not valid any more; nothing was sent to the application."
        )
        return redirect("login")
    return OAuth2ResponseRedirect(pending.denial_url(), pending.application.get_allowed_schemes())


def home(request: HttpRequest) -> HttpResponse:
    config = {
        "mcpServers": {
            "django-mcp": {
                "command": "npx",
                # /mcp: on /sse mcp-remote first logs "Received error (status 405)" and falls back.
                "args": ["mcp-remote", f"{settings.PUBLIC_URL}/mcp"],
            }
        }
    }
    return render(
        request,
        "home.html",
        {
            "sse_url": f"{settings.PUBLIC_URL}/sse",
            "mcp_url": f"{settings.PUBLIC_URL}/mcp",
            "claude_config": json.dumps(config, indent=2),
        },
    )


@login_required
def connected_apps(request: AuthenticatedRequest) -> HttpResponse:
    return _connected_apps_page(request, token_form=PersonalTokenForm())


def _connected_apps_page(
    request: AuthenticatedRequest,
    *,
    token_form: PersonalTokenForm,
    new_token: services.IssuedPersonalToken | None = None,
    status: int = 200,
) -> HttpResponse:
    now = timezone.now()
    response = render(
        request,
        "oauthapp/connected_apps.html",
        {
            "consents": selectors.consent_list_for_user(user=request.user),
            "github_link": selectors.github_link_for_user(user=request.user),
            "personal_tokens": [
                (token, token.status(now)) for token in selectors.personal_tokens_for_user(user=request.user)
            ],
            "token_form": token_form,
            "new_token": new_token,
        },
        status=status,
    )
    if new_token is not None:
        response["Cache-Control"] = "no-store"  # the page shows the token, once
    return response


@login_required
@require_POST
def personal_token_create(request: AuthenticatedRequest) -> HttpResponse:
    """Create a personal access token and show it on the page, once (it is stored hashed)."""
    refusal = github_policy_gate(request, on="personal token", next_url=reverse("connected-apps"))
    if refusal is not None:
        return refusal
    form = PersonalTokenForm(request.POST)
    if not form.is_valid():
        return _connected_apps_page(request, token_form=form, status=400)
    issued = services.personal_token_create(
        user=request.user,
        name=form.cleaned_data["name"],
        expires_in_days=form.cleaned_data["expires_in_days"],
    )
    return _connected_apps_page(request, token_form=PersonalTokenForm(), new_token=issued)


@login_required
@require_POST
def personal_token_revoke(request: AuthenticatedRequest, token_id: int) -> HttpResponse:
    personal_token = get_object_or_404(PersonalAccessToken, pk=token_id, user=request.user)
    services.personal_token_revoke(personal_token=personal_token)
    messages.success(request, f"The token {personal_token.name!r} is revoked; it no longer works.")
    return redirect("connected-apps")


@login_required
@require_POST
def connected_app_revoke(request: AuthenticatedRequest, client_id: str) -> HttpResponse:
    application = get_object_or_404(Application, client_id=client_id)
    services.consent_revoke(user=request.user, application=application)
    messages.success(request, f"{application.display_name} can no longer use your account.")
    return redirect("connected-apps")
