"""Read the deployment files the way docker compose does, to run them without Docker.

The deployment tests take the web command and environment from docker-compose.yml (plus
the image's ENV and the env_file), never from a copy kept in the tests.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "default.conf.template"

_VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def dotenv_values(path: Path) -> dict[str, str]:
    """The active KEY=value lines of an env file (comments and blank lines skipped)."""
    values = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=value: {raw!r}"
        values[key.strip()] = value.strip()
    return values


def dotenv_documented_names(path: Path) -> dict[str, bool]:
    """Every variable named in an env file, active or commented out, and whether a comment
    (not itself a KEY= line) precedes it in its paragraph."""
    names: dict[str, bool] = {}
    explained = False
    for raw in path.read_text().splitlines():
        line = raw.strip()
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", line)
        if match:
            names.setdefault(match.group(1), explained)
        elif not line:
            explained = False
        elif line.startswith("#") and not line.startswith("# ---"):
            explained = True
    return names


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $VAR and $$."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = variables.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op in {":?", "?"}:
            if not current if op == ":?" else current is None:
                raise ValueError(f"{name}: {arg}")
            return current or ""
        return current or ""

    return _VARIABLE.sub(replace, value)


def dockerfile_env(path: Path = DOCKERFILE) -> dict[str, str]:
    """ENV of the Dockerfile's final stage (PATH left out: the tests use their own venv)."""
    text = path.read_text().replace("\\\n", " ")
    stages = re.split(r"(?m)^FROM\s", text)
    env: dict[str, str] = {}
    for line in stages[-1].splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                if key != "PATH":
                    env[key] = value
    return env


def dockerfile_cmd(path: Path = DOCKERFILE) -> list[str]:
    import json

    lines = [line for line in path.read_text().splitlines() if line.startswith("CMD ")]
    return json.loads(lines[-1][4:])


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def service_command(compose: dict[str, Any], service: str) -> list[str]:
    command = compose["services"][service]["command"]
    return list(command) if isinstance(command, list) else shlex.split(command)


def service_environment(compose: dict[str, Any], service: str, dotenv: dict[str, str]) -> dict[str, str]:
    """What a container of `service` sees: image ENV, then env_file, then `environment`,
    with ${...} interpolated from the .env values as compose does."""
    spec = compose["services"][service]
    env: dict[str, str] = dockerfile_env() if "build" in spec else {}
    env_files = spec.get("env_file", [])
    for name in [env_files] if isinstance(env_files, str) else env_files:
        assert name == ".env", f"unexpected env_file {name}"
        env.update(dotenv)
    environment = spec.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    for key, value in environment.items():
        env[key] = interpolate(str(value), dotenv)
    return env


def worker_argv(command: list[str], *, port: int) -> list[str]:
    """The compose web command with its bind address and port moved to 127.0.0.1:<port>."""
    assert command[:3] == ["python", "manage.py", "serve"], command
    argv = [sys.executable, *command[1:]]
    for flag, value in (("-b", "127.0.0.1"), ("-p", str(port))):
        index = argv.index(flag)
        argv[index + 1] = value
    return argv
