"""The log check itself (tests/support/logcheck.py): it is what makes every live server's
traceback or ERROR fail a test, so it must be seen to catch them, in both log formats the
settings offer, and to fail a test whose expected log line never appeared.

The sample records are made by the formatters the settings configure (LOGGING), so a change
of format that the checker no longer reads fails here.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from pythonjsonlogger.json import JsonFormatter

from tests.support import logcheck


def formatter(kind: str) -> logging.Formatter:
    logging_config: dict[str, Any] = settings.LOGGING
    config = dict(logging_config["formatters"][kind])
    if kind == "json":
        config.pop("()")
        return JsonFormatter(**config)
    return logging.Formatter(config["format"])


def record(kind: str, level: int, message: str, *, with_traceback: bool = False) -> str:
    exc_info = None
    if with_traceback:
        try:
            raise KeyError("device_code")
        except KeyError:
            exc_info = sys.exc_info()
    entry = logging.LogRecord("oauthapp.views", level, __file__, 1, message, (), exc_info)
    entry.request_id = "abc123"
    return formatter(kind).format(entry) + "\n"


FORMATS = ["plain", "json"]


@pytest.mark.parametrize("kind", FORMATS)
def test_it_flags_an_error_record(kind: str) -> None:
    text = record(kind, logging.INFO, "fine") + record(kind, logging.ERROR, "the audit writer gave up")
    (found,) = logcheck.problems(text, [])
    assert "the audit writer gave up" in found


@pytest.mark.parametrize("kind", FORMATS)
def test_it_flags_a_critical_record(kind: str) -> None:
    assert len(logcheck.problems(record(kind, logging.CRITICAL, "out of disk"), [])) == 1


@pytest.mark.parametrize("kind", FORMATS)
def test_it_flags_a_traceback_logged_at_any_level(kind: str) -> None:
    text = record(kind, logging.WARNING, "retrying", with_traceback=True)
    (found,) = logcheck.problems(text, [])
    assert "KeyError" in found


def test_it_flags_a_traceback_printed_without_a_log_record() -> None:
    crash = 'Traceback (most recent call last):\n  File "manage.py", line 1\nValueError: boom\n'
    assert logcheck.problems(crash, []) == [crash.rstrip("\n")]
    daphne = "2026-01-01 00:00:00,000 WARNING daphne.server: Exception inside application: boom\n"
    assert len(logcheck.problems(daphne, [])) == 1


@pytest.mark.parametrize("kind", FORMATS)
def test_it_passes_info_and_warning_records_that_mention_errors(kind: str) -> None:
    text = record(kind, logging.INFO, "ERROR budget fine") + record(kind, logging.WARNING, 'level "ERROR"')
    text += '127.0.0.1:5000 - - [01/Jan/2026:00:00:00] "GET /ERROR" 404 12\n'  # daphne's access line
    assert logcheck.problems(text, []) == []


@pytest.mark.parametrize("kind", FORMATS)
def test_an_allowed_pattern_covers_only_the_records_it_matches(kind: str) -> None:
    text = record(kind, logging.ERROR, "Redis is away") + record(kind, logging.ERROR, "the database is away")
    (found,) = logcheck.problems(text, [logcheck.re.compile("Redis is away")])
    assert "the database is away" in found


def test_a_watched_log_that_shows_a_problem_fails_the_check(tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    path.write_text(record("json", logging.ERROR, "before the watch began"))  # not this test's business
    logcheck.watch("sample server", path)
    with path.open("a") as log:
        log.write(record("json", logging.INFO, "fine") + record("json", logging.ERROR, "it broke"))
    with pytest.raises(pytest.fail.Exception, match="sample server logged 1 unexpected problem"):
        logcheck.stopped(path)


def test_an_expected_log_line_that_never_appears_fails_the_test(tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    logcheck.watch("sample server", path)
    path.write_text(record("plain", logging.ERROR, "the error this test provoked"))
    logcheck.expect_log("the error this test provoked")
    logcheck.expect_log("an error that never came")
    with pytest.raises(pytest.fail.Exception, match="an error that never came"):
        logcheck.after_test()
    logcheck.stopped(path)  # its problem was expected and read: nothing left to fail


def test_an_expected_log_line_that_appears_passes(tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    logcheck.watch("sample server", path)
    path.write_text(record("json", logging.ERROR, "the error this test provoked"))
    logcheck.expect_log("the error this test provoked")
    logcheck.after_test()
    logcheck.stopped(path)
