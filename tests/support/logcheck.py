"""Every live server a test starts fails that test if its log shows a traceback or an ERROR
record the test did not expect.

Servers (daphne workers, nginx is not one) register their log file here when they start.
An autouse fixture (tests/conftest.py) notes where each log ends before a test and reads what
was added after it; stopping a server reads the rest, so a traceback during shutdown fails
the fixture that stopped it. A test that provokes an error on purpose says so with
`expect_log(pattern)`, and each expected pattern must then actually appear: an expectation
that never matches is a test that cannot fail.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# A log record at ERROR or CRITICAL in the settings' plain format ("<date> <time> ERROR name: ..."),
# a Python traceback (printed, or inside a JSON record's exc_info), or daphne's fallback for an
# exception that reached it. LOG_FORMAT=json records are read as JSON: see is_problem().
PROBLEM = re.compile(
    r"^\S+ \S+ (ERROR|CRITICAL) |Traceback \(most recent call last\)|Exception inside application",
    re.MULTILINE,
)
PROBLEM_LEVELS = {"ERROR", "CRITICAL"}


@dataclass
class WatchedLog:
    name: str
    path: Path
    offset: int = 0
    # Patterns this log may show for as long as the server lives (set by whoever starts it).
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def read_new(self) -> str:
        if not self.path.exists():
            return ""
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        return data.decode(errors="replace")


_watched: dict[Path, WatchedLog] = {}
_expected: list[re.Pattern[str]] = []
_matched: set[str] = set()


def watch(name: str, path: Path, *, allowed: tuple[str, ...] = ()) -> WatchedLog:
    """Start checking `path` (from its current end: earlier runs of the same file are done)."""
    log = _watched.get(path)
    if log is None:
        size = path.stat().st_size if path.exists() else 0
        log = _watched[path] = WatchedLog(name=name, path=path, offset=size)
    log.allowed = [re.compile(p) for p in allowed]
    return log


def expect_log(pattern: str) -> None:
    """The current test provokes a log line matching `pattern` (a regex) on purpose.

    The pattern is matched against the whole record, its traceback included.
    """
    _expected.append(re.compile(pattern))


# A plain record starts with its timestamp; a JSON record (LOG_FORMAT=json) is one line.
RECORD_START = re.compile(r"^(\d{4}-\d\d-\d\d \d|\{)")


def records(text: str) -> list[str]:
    """`text` cut into log records: a timestamped line and the lines that follow it (its
    traceback, say) up to the next timestamped line, or one JSON line. Output before the first
    record (a crash before logging was set up) is a record of its own."""
    out: list[list[str]] = [[]]
    for line in text.splitlines():
        if RECORD_START.match(line) and out[-1]:
            out.append([])
        out[-1].append(line)
    return ["\n".join(lines) for lines in out if lines]


def json_level(record: str) -> str | None:
    """The level of a LOG_FORMAT=json record (None for anything else)."""
    if not record.startswith("{"):
        return None
    try:
        fields = json.loads(record.splitlines()[0])
    except ValueError:
        return None
    return str(fields.get("level")) if isinstance(fields, dict) else None


def is_problem(record: str) -> bool:
    return bool(PROBLEM.search(record)) or json_level(record) in PROBLEM_LEVELS


def problems(text: str, allowed: list[re.Pattern[str]]) -> list[str]:
    """The records in `text` that show a problem no allowed or expected pattern matches."""
    found: list[str] = []
    for record in records(text):
        if not is_problem(record):
            continue
        hit = next((p for p in [*allowed, *_expected] if p.search(record)), None)
        if hit is None:
            found.append(record)
        else:
            _matched.add(hit.pattern)
    return found


def check(log: WatchedLog, *, when: str) -> None:
    text = log.read_new()
    bad = problems(text, log.allowed)
    if bad:
        shown = "\n---\n".join(block[-3000:] for block in bad[:3])
        pytest.fail(f"{log.name} logged {len(bad)} unexpected problem(s) {when}:\n{shown}", pytrace=False)


def before_test() -> None:
    _expected.clear()
    _matched.clear()
    for log in _watched.values():
        log.read_new()  # what happened before this test is not its business


def after_test() -> None:
    try:
        for log in list(_watched.values()):
            check(log, when="during this test")
        unmatched = [p.pattern for p in _expected if p.pattern not in _matched]
        if unmatched:
            pytest.fail(f"expected log lines never appeared: {unmatched}", pytrace=False)
    finally:
        _expected.clear()


def stopped(path: Path) -> None:
    """The server writing `path` has stopped: check what it wrote since the last test."""
    log = _watched.pop(path, None)
    if log is not None:
        check(log, when="while stopping")
