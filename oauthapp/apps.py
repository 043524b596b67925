from django.apps import AppConfig


class OAuthAppConfig(AppConfig):
    name = "oauthapp"
    verbose_name = "OAuth authorization server"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib import admin

        from . import signals  # noqa: F401 (connects the receivers)
        from .forms import AdminLoginForm

        # The admin login says what ours says when a login is refused or throttled.
        admin.site.login_form = AdminLoginForm
