"""Request ids, structured logs and request metrics for the Django views.

Every request gets an id: the `X-Request-ID` the proxy sent (compose's nginx sets one:
deploy/nginx/default.conf.template), or a new one. It is on every log record of the request
(`request_id`, printed by LOG_FORMAT=json), in the `X-Request-ID` response header, and it
travels with a request forwarded to another worker, so one grep follows a call from the worker
that took it to the one that served it.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from .metrics import METRICS

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


_PREFIX = uuid.uuid4().hex[:8]
_COUNTER = itertools.count(1)


def request_id_from(value: str | None) -> str:
    """The caller's id if it is a sane token (never echo arbitrary header text), else a new
    one: unique per process (a random prefix) and cheap (a counter)."""
    if value and _VALID.match(value):
        return value
    return f"{_PREFIX}{next(_COUNTER):x}"


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (`%(request_id)s`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class RequestMetricsMiddleware:
    """Counts and times the Django views by route name and status, and gives every answer
    its request id. (The MCP endpoints are counted in mcpapp.guards.)"""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        started = self._start(request)
        response: HttpResponse = self.get_response(request)
        return self._finish(request, response, started)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        started = self._start(request)
        get_response: Callable[[HttpRequest], Awaitable[HttpResponse]] = self.get_response
        response = await get_response(request)
        return self._finish(request, response, started)

    @staticmethod
    def _start(request: HttpRequest) -> float:
        REQUEST_ID.set(request_id_from(request.headers.get("X-Request-ID")))
        return time.perf_counter()

    @staticmethod
    def _finish(request: HttpRequest, response: HttpResponse, started: float) -> HttpResponse:
        match = getattr(request, "resolver_match", None)
        route = (match.view_name if match is not None else "") or "(unrouted)"
        METRICS.django_requests.labels(route=route, status=str(response.status_code)).inc()
        METRICS.django_latency.labels(route=route).observe(time.perf_counter() - started)
        response["X-Request-ID"] = REQUEST_ID.get()
        return response
