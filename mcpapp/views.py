from __future__ import annotations

import ipaddress
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.crypto import constant_time_compare
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from oauthapp.throttle import client_address

from .health import health_checks
from .worker import get_worker

logger = logging.getLogger(__name__)


async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database, Redis, the cache and this worker answer, else 503 naming the
    part (a draining worker says "draining", so the proxy stops sending it new work)."""
    worker = await get_worker()
    checks = await health_checks(worker)
    healthy = all(value == "ok" for value in checks.values())
    response = JsonResponse(
        {
            "status": "ok" if healthy else ("draining" if worker.state != "serving" else "error"),
            "checks": checks,
        },
        status=200 if healthy else 503,
    )
    response["Cache-Control"] = "no-store"
    # A failing check is the answer asked for, not a server error: keep django.request quiet.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


def metrics_allowed(request: HttpRequest) -> bool:
    """Operators (staff), an allowlisted address, or the metrics bearer token. Behind the proxy
    the address is the caller the proxy names (with nginx on the same host, REMOTE_ADDR is
    always 127.0.0.1)."""
    token = settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    if token and given.startswith("Bearer ") and constant_time_compare(given[7:].strip(), token):
        return True
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_staff:
        return True
    address = client_address(request)
    if address is None:
        return False
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in settings.METRICS_ALLOWED_NETWORKS)


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format for this worker (README: Metrics)."""
    if not metrics_allowed(request):
        response = HttpResponse("Metrics are for operators.\n", status=403, content_type="text/plain")
        if settings.METRICS_TOKEN:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    response = HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
