"""Operators manage clients, consents, users and personal tokens here. No secret or token is shown."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from oauth2_provider.models import AccessToken, RefreshToken, revoke_access_token
from social_django.admin import UserSocialAuthOption
from social_django.models import UserSocialAuth

from . import services
from .github import SECRET_EXTRA_DATA_KEYS
from .models import Application, Consent, GithubCredential, OAuthEvent, PersonalAccessToken

# The admin is this product's, not Django's: its name in the header and the page titles.
admin.site.site_header = settings.MCP_SERVER_NAME
admin.site.site_title = f"{settings.MCP_SERVER_NAME} admin"
admin.site.index_title = "Operate the server"

SKIP_CONSENT_WARNING = (
    "Users are never asked: anyone who logs in through this client hands it their account at once. "
    "Only for a client you run yourself; never for a dynamically registered one."
)


class ApplicationAdminForm(forms.ModelForm):
    class Meta:
        model = Application
        fields = ("name", "client_type", "redirect_uris", "user", "skip_authorization")
        labels = {"skip_authorization": "Skip the consent page (dangerous)"}
        help_texts = {"skip_authorization": SKIP_CONSENT_WARNING}


class ClientStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("enabled", "Enabled"), ("disabled", "Disabled")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Application]) -> QuerySet[Application]:
        if self.value() == "enabled":
            return queryset.filter(disabled_at__isnull=True)
        if self.value() == "disabled":
            return queryset.filter(disabled_at__isnull=False)
        return queryset


# Registered by django-oauth-toolkit's admin module via OAUTH2_PROVIDER["APPLICATION_ADMIN_CLASS"].
class ApplicationAdmin(admin.ModelAdmin):
    """OAuth clients with what an operator decides on: how and when they were registered, where
    they send users back to, when they were last used, whether they are disabled. The toolkit's
    OIDC and secret-handling fields, which MCP clients never use, are left out."""

    form = ApplicationAdminForm
    view_on_site = False  # the toolkit's get_absolute_url names a page this server does not have
    list_display = (
        "display_name",
        "client_id",
        "client_type",
        "registration_source",
        "redirect_uri_list",
        "created",
        "last_used_at",
        "is_enabled",
        "asks_consent",
        "is_resource_server",
    )
    fieldsets = (
        (None, {"fields": ("name", "client_id", "client_type", "redirect_uris")}),
        (
            "Registration",
            {
                "fields": (
                    "registration_source",
                    "registered_from",
                    "created",
                    "registration_metadata",
                    "cimd_expires_at",
                    "document_fetched",
                )
            },
        ),
        (
            "Use",
            {
                "fields": ("last_used_at", "disabled_at", "updated", "is_resource_server"),
                "description": "Disable or enable a client with the actions on the client list.",
            },
        ),
        ("Advanced", {"classes": ("collapse",), "fields": ("user", "skip_authorization")}),
    )
    list_filter = ("registration_source", "client_type", ClientStatusFilter, "is_resource_server")
    search_fields = ("name", "client_id", "redirect_uris")
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    ordering = ("-created",)
    exclude = ("client_secret",)
    readonly_fields = (
        "client_id",
        "registration_source",
        "registered_from",
        "registration_metadata",
        "created",
        "updated",
        "last_used_at",
        "disabled_at",
        "cimd_expires_at",
        "document_fetched",
    )
    actions = (
        "disable_clients",
        "enable_clients",
        "revoke_client_tokens",
        "mark_resource_servers",
        "unmark_resource_servers",
    )

    @admin.display(description="name", ordering="name")
    def display_name(self, obj: Application) -> str:
        return obj.display_name

    # A client ID metadata document client (registration source "cimd", its client_id the
    # document's URL) is rewritten from its document at every fetch, so what came from the
    # document is read-only here, and `updated` is when the document was last fetched.
    CIMD_DOCUMENT_FIELDS = ("name", "redirect_uris", "client_type", "authorization_grant_type", "user")

    def get_readonly_fields(
        self, request: HttpRequest, obj: Application | None = None
    ) -> list[str] | tuple[str, ...]:
        fields = tuple(super().get_readonly_fields(request, obj))
        if obj is not None and obj.registration_source == Application.RegistrationSource.CIMD:
            return (*fields, *(f for f in self.CIMD_DOCUMENT_FIELDS if f not in fields))
        # A registered client's type decides how it authenticates: changing it breaks the client.
        return (*fields, "client_type") if obj is not None else fields

    @admin.display(description="document last fetched")
    def document_fetched(self, obj: Application) -> object:
        return obj.updated if obj.registration_source == Application.RegistrationSource.CIMD else "-"

    @admin.display(description="enabled", boolean=True, ordering="disabled_at")
    def is_enabled(self, obj: Application) -> bool:
        return obj.disabled_at is None

    @admin.display(description="redirect URIs")
    def redirect_uri_list(self, obj: Application) -> str:
        uris = obj.redirect_uris.split()
        return ", ".join(uris[:2]) + (f" (+{len(uris) - 2})" if len(uris) > 2 else "")

    @admin.display(description="asks consent", boolean=True, ordering="-skip_authorization")
    def asks_consent(self, obj: Application) -> bool:
        return not obj.skip_authorization

    def save_model(self, request: HttpRequest, obj: Application, form: Any, change: bool) -> None:
        if not obj.authorization_grant_type:  # not on the form: MCP clients use the code flow
            obj.authorization_grant_type = Application.GRANT_AUTHORIZATION_CODE
        super().save_model(request, obj, form, change)
        if obj.skip_authorization:
            warning = f"{obj.display_name} skips the consent page. {SKIP_CONSENT_WARNING}"
            self.message_user(request, warning, messages.WARNING)

    @admin.action(description="Disable selected clients (kills their tokens)")
    def disable_clients(self, request: HttpRequest, queryset: QuerySet[Application]) -> None:
        for application in queryset:
            services.application_disable(application=application)
        self.message_user(request, f"Disabled {queryset.count()} client(s).", messages.SUCCESS)

    @admin.action(description="Enable selected clients")
    def enable_clients(self, request: HttpRequest, queryset: QuerySet[Application]) -> None:
        for application in queryset:
            services.application_enable(application=application)
        self.message_user(request, f"Enabled {queryset.count()} client(s).", messages.SUCCESS)

    @admin.action(description="Allow selected confidential clients to introspect tokens (resource servers)")
    def mark_resource_servers(self, request: HttpRequest, queryset: QuerySet[Application]) -> None:
        count = services.applications_mark_resource_server(applications=queryset, allowed=True)
        skipped = queryset.count() - count
        note = f" {skipped} public client(s) skipped: only confidential clients may." if skipped else ""
        self.message_user(request, f"{count} client(s) may now introspect tokens.{note}", messages.SUCCESS)

    @admin.action(description="Stop selected clients from introspecting tokens")
    def unmark_resource_servers(self, request: HttpRequest, queryset: QuerySet[Application]) -> None:
        count = services.applications_mark_resource_server(applications=queryset, allowed=False)
        self.message_user(request, f"{count} client(s) may no longer introspect tokens.", messages.SUCCESS)

    @admin.action(description="Revoke all tokens of selected clients")
    def revoke_client_tokens(self, request: HttpRequest, queryset: QuerySet[Application]) -> None:
        total = sum(services.tokens_revoke(application=application) for application in queryset)
        self.message_user(request, f"Revoked {total} access token(s).", messages.SUCCESS)


@admin.register(Consent)
class ConsentAdmin(admin.ModelAdmin):
    list_display = ("user", "application", "scope", "created", "last_used_at")
    list_select_related = ("user", "application")
    raw_id_fields = ("user", "application")
    search_fields = ("user__username", "application__name", "application__client_id")
    actions = ("revoke_consents",)

    @admin.action(description="Revoke selected consents (kills their tokens)")
    def revoke_consents(self, request: HttpRequest, queryset: QuerySet[Consent]) -> None:
        for consent in queryset.select_related("user", "application"):
            services.consent_revoke(user=consent.user, application=consent.application)
        self.message_user(request, "Consents revoked.", messages.SUCCESS)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that only the server writes: listed and revoked with an action, never edited here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AccessTokenAdmin(ReadOnlyAdmin):
    """Access tokens, without a token column: they are stored as checksums, the token itself
    never (OAUTH2_PROVIDER["ACCESS_TOKEN_ADMIN_CLASS"]). Revoke, do not delete: revocation also
    ends the refresh token and drops the cached check."""

    list_display = ("pk", "user", "application", "scope", "expires", "created")
    list_select_related = ("application", "user")
    list_filter = (("expires", admin.DateFieldListFilter),)
    search_fields = ("user__username", "application__name", "application__client_id")
    fields = ("user", "application", "scope", "resource", "expires", "created", "updated")
    readonly_fields = fields
    actions = ("revoke_tokens",)

    @admin.action(description="Revoke selected access tokens", permissions=["view"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[AccessToken]) -> None:
        count = 0
        for token in queryset:
            revoke_access_token(token)
            count += 1
        self.message_user(request, f"Revoked {count} access token(s).", messages.SUCCESS)


class RefreshTokenAdmin(ReadOnlyAdmin):
    """Refresh tokens, without a token column (stored as checksums too;
    OAUTH2_PROVIDER["REFRESH_TOKEN_ADMIN_CLASS"]). Revoked ones stay as tombstones for reuse
    detection until `prune_expired` removes them."""

    list_display = ("pk", "user", "application", "created", "revoked")
    list_select_related = ("application", "user")
    list_filter = (("revoked", admin.EmptyFieldListFilter),)
    search_fields = ("user__username", "application__name", "application__client_id")
    fields = ("user", "application", "access_token", "created", "updated", "revoked")
    readonly_fields = fields
    actions = ("revoke_tokens",)

    @admin.action(description="Revoke selected refresh tokens", permissions=["view"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[RefreshToken]) -> None:
        count = 0
        for token in queryset:
            token.revoke()
            count += 1
        self.message_user(request, f"Revoked {count} refresh token(s).", messages.SUCCESS)


User = get_user_model()


class MCPUserAdmin(UserAdmin):
    actions = ("revoke_user_tokens",)

    @admin.action(description="Revoke all OAuth tokens of selected users")
    def revoke_user_tokens(self, request: HttpRequest, queryset: QuerySet) -> None:
        total = sum(services.tokens_revoke(user=user) for user in queryset)
        self.message_user(request, f"Revoked {total} access token(s).", messages.SUCCESS)


admin.site.unregister(User)
admin.site.register(User, MCPUserAdmin)


class SafeUserSocialAuthAdmin(UserSocialAuthOption):
    """social-auth's admin, with extra_data shown read-only and any token in it masked."""

    exclude = ("extra_data",)
    readonly_fields = ("created", "modified", "profile_data")  # type: ignore[assignment]

    @admin.display(description="extra data")
    def profile_data(self, obj: UserSocialAuth) -> str:
        data = obj.extra_data if isinstance(obj.extra_data, dict) else {}
        return ", ".join(
            f"{key}: {'(hidden)' if key in SECRET_EXTRA_DATA_KEYS else value}"
            for key, value in sorted(data.items())
        )


admin.site.unregister(UserSocialAuth)
admin.site.register(UserSocialAuth, SafeUserSocialAuthAdmin)


@admin.register(GithubCredential)
class GithubCredentialAdmin(admin.ModelAdmin):
    """Which linked GitHub accounts have a stored token; the token itself is never shown."""

    list_display = ("social", "scope", "created", "updated")
    list_select_related = ("social", "social__user")
    raw_id_fields = ("social",)
    search_fields = ("social__user__username", "social__uid")
    fields = ("social", "scope", "created", "updated")
    readonly_fields = ("social", "scope", "created", "updated")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(PersonalAccessToken)
class PersonalAccessTokenAdmin(admin.ModelAdmin):
    """Users' personal access tokens: who, when made, expiry, last use; revoke them. Never the token."""

    list_display = ("name", "user", "created", "expires_display", "last_used_at", "state")
    list_select_related = ("user",)
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name", "user__username")
    raw_id_fields = ("user",)
    fields = ("name", "user", "created", "expires", "last_used_at", "revoked_at")
    readonly_fields = ("name", "user", "created", "expires", "last_used_at", "revoked_at")
    actions = ("revoke_tokens",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # users create them (shown once); `manage.py create_personal_token` for others

    @admin.display(description="expires", ordering="expires")
    def expires_display(self, obj: PersonalAccessToken) -> object:
        return "never" if obj.never_expires else obj.expires

    @admin.display(description="state")
    def state(self, obj: PersonalAccessToken) -> str:
        return obj.status(timezone.now())

    @admin.action(description="Revoke selected personal access tokens")
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[PersonalAccessToken]) -> None:
        for personal_token in queryset:
            services.personal_token_revoke(personal_token=personal_token)
        self.message_user(request, f"Revoked {queryset.count()} personal access token(s).", messages.SUCCESS)


@admin.register(OAuthEvent)
class OAuthEventAdmin(admin.ModelAdmin):
    """The OAuth event log: read only, filterable by kind, user and client."""

    list_display = ("created", "kind", "username", "client_name", "address", "short_detail")
    list_filter = (
        "kind",
        ("created", admin.DateFieldListFilter),
        ("user", admin.RelatedOnlyFieldListFilter),
        ("application", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("username", "client_name", "application__client_id", "address")
    list_select_related = ("user", "application")
    raw_id_fields = ("user", "application")
    date_hierarchy = "created"
    readonly_fields = (
        "kind",
        "created",
        "user",
        "application",
        "username",
        "client_name",
        "address",
        "detail",
    )

    @admin.display(description="detail")
    def short_detail(self, obj: OAuthEvent) -> str:
        text = ", ".join(f"{key}: {value}" for key, value in sorted(obj.detail.items()))
        return text[:120]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: OAuthEvent | None = None) -> bool:
        return False
