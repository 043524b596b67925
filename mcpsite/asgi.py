"""ASGI entry point: MCP transports first, Django for everything else.

The Django ASGI application is built before anything imports models or consumers.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcpsite.settings")
django_asgi_app = get_asgi_application()

from mcpapp.routing import build_application  # noqa: E402

application = build_application(django_asgi_app)
