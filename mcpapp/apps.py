from django.apps import AppConfig


class MCPAppConfig(AppConfig):
    name = "mcpapp"
    verbose_name = "MCP server"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (token cache invalidation on revocation)
