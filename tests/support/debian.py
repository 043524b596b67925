"""Debian packages that tests drive as programs (nginx, docker-compose).

Found on the machine, or installed with apt-get when we are root (CI runs as root on a clean
clone), or skipped locally / failed under CI=true when neither is possible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
_updated = False


def _find(command: str) -> str | None:
    found = shutil.which(command)
    if found:
        return found
    for directory in SBIN_DIRS:
        candidate = Path(directory) / command
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI needs it", pytrace=False)
    pytest.skip(message)


def require_debian_program(command: str, *, package: str) -> str:
    """Path of `command`, installing Debian's `package` first if it is missing and we may."""
    global _updated
    found = _find(command)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _unavailable(f"{command} is not installed (apt-get install {package} needs root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [["apt-get", "install", "-y", "-q", "--no-install-recommends", package]]
    if not _updated:
        steps.insert(0, ["apt-get", "update", "-q"])
    for step in steps:
        result = subprocess.run(step, env=env, capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0:
            _unavailable(f"{' '.join(step)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    _updated = True
    found = _find(command)
    if not found:
        _unavailable(f"{package} installed but {command} is still missing")
    assert found is not None
    return found
