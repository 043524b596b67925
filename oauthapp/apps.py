from django.apps import AppConfig


class OAuthAppConfig(AppConfig):
    name = "oauthapp"
    verbose_name = "OAuth authorization server"
    default_auto_field = "django.db.models.BigAutoField"
