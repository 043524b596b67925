from typing import Any

from django.conf import settings
from django.http import HttpRequest


def site(request: HttpRequest) -> dict[str, Any]:
    return {
        "server_name": settings.MCP_SERVER_NAME,
        "public_url": settings.PUBLIC_URL,
        "github_enabled": settings.GITHUB_ENABLED,
    }
