from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from .health import health_checks


def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database, Redis, the cache and the channel layer answer, else 503 naming the part."""
    checks = health_checks()
    healthy = all(value == "ok" for value in checks.values())
    response = JsonResponse(
        {"status": "ok" if healthy else "error", "checks": checks}, status=200 if healthy else 503
    )
    response["Cache-Control"] = "no-store"
    # A failing check is the answer asked for, not a server error: keep django.request quiet.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response
