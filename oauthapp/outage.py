"""What counts as a backend outage (retry later) rather than a bug, and how it is logged.

Imported by the logging configuration, before Django's apps are ready: no models here.
"""

from __future__ import annotations

import logging

from django.db.utils import InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
)


def is_outage(exception: BaseException | None) -> bool:
    return isinstance(exception, OUTAGE_ERRORS)


class OutageLogFilter(logging.Filter):
    """An outage that reached Django's request handler is logged in one line, not a traceback.

    The outage is expected on a bad day and already answered with a 503; a traceback in the
    log is kept for what is a bug.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and is_outage(record.exc_info[1]):
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()} (backend unavailable: {type(error).__name__}: {error})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            # An outage on a bad day, answered with a 503: a warning, not an error of ours.
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
