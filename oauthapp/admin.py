"""Operators manage clients, consents and users here. No secret or token is ever displayed."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest
from social_django.admin import UserSocialAuthOption
from social_django.models import UserSocialAuth

from . import services
from .github import SECRET_EXTRA_DATA_KEYS
from .models import Application, Consent, GithubCredential, OAuthEvent


# Registered by django-oauth-toolkit's admin module via OAUTH2_PROVIDER["APPLICATION_ADMIN_CLASS"].
class ApplicationAdmin(admin.ModelAdmin):
    list_display = (
        "display_name",
        "client_id",
        "client_type",
        "registration_source",
        "created",
        "last_used_at",
        "is_enabled",
        "is_resource_server",
    )
    list_filter = (
        "registration_source",
        "client_type",
        ("disabled_at", admin.EmptyFieldListFilter),
        "is_resource_server",
    )
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

    @admin.display(description="enabled", boolean=True, ordering="disabled_at")
    def is_enabled(self, obj: Application) -> bool:
        return obj.disabled_at is None

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
    readonly_fields = ("created", "modified", "profile_data")

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
