"""Settings for the remote MCP server.

Every knob comes from the environment (or a `.env` file beside manage.py) and has a local
default that boots: SQLite and the local-memory cache, in one process. A
deployment sets `DATABASE_URL`, `REDIS_URL`, `SECRET_KEY`, `PUBLIC_URL` and `DEBUG=false`;
with `DEBUG` off the module refuses to load on an unsafe value rather than run insecurely.
`.env.example` lists every variable with a comment.
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from redis.connection import parse_url as parse_redis_url

BASE_DIR = Path(__file__).resolve().parent.parent
DEV_SECRET_KEY = "dev-only-insecure-secret-key-do-not-use-in-production"
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


DOTENV_FILE = Path(os.environ.get("DOTENV_PATH", BASE_DIR / ".env"))


def _read_dotenv(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of `path` (none if there is no such file)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


DOTENV_VALUES = _read_dotenv(DOTENV_FILE)
for _key, _value in DOTENV_VALUES.items():
    os.environ.setdefault(_key, _value)  # the real environment wins


def where_set(name: str) -> str:
    """Where a variable's value comes from, for error messages: the dotenv file or the environment."""
    from_file = name in DOTENV_VALUES and os.environ.get(name) == DOTENV_VALUES[name]
    return DOTENV_FILE.name if from_file else "the environment"


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true or false)")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number") from exc
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}")
    return value


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def env_log_level(name: str, default: str) -> str:
    value = env_str(name, default).upper()
    if value not in LOG_LEVELS:
        levels = f"{', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}"
        raise ImproperlyConfigured(f"{name}={os.environ.get(name)!r} is not a log level (use {levels})")
    return value


def env_database(name: str, default: str, **options: Any) -> dict[str, Any]:
    """A DATABASES entry from a database URL. The URL is never echoed: it holds a password."""
    url = env_str(name, default)
    example = "use postgres://user:password@host:5432/name, or sqlite:////path/to/db.sqlite3"
    try:
        return dict(dj_database_url.parse(url, **options))
    except dj_database_url.UnknownSchemeError:
        scheme = urlsplit(url).scheme or url.partition(":")[0]
        raise ImproperlyConfigured(
            f"{name} (from {where_set(name)}) has an unknown scheme {scheme!r}: {example}."
        ) from None
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} (from {where_set(name)}) is not a valid URL (a port that is not a number? "
            f"characters such as @ or / in the password must be %-encoded): {example}."
        ) from None


# --- Core -----------------------------------------------------------------------------------

DEBUG = env_bool("DEBUG", True)
# Empty counts as unset: .env.example has an empty SECRET_KEY= line for the user to fill in.
SECRET_KEY = env_str("SECRET_KEY") or DEV_SECRET_KEY

# The port `make run` (manage.py serve) listens on; PUBLIC_URL follows it unless set.
PORT = env_int("PORT", 8787, minimum=1)
if PORT > 65535:
    raise ImproperlyConfigured(f"PORT={PORT} is not a TCP port (1-65535)")
# The origin clients are given. The OAuth issuer, every advertised endpoint and the
# resource identifiers are built from it, never from the request's Host header.
PUBLIC_URL = (env_str("PUBLIC_URL") or f"http://localhost:{PORT}").rstrip("/")
_public = urlsplit(PUBLIC_URL)
if _public.scheme not in {"http", "https"} or not _public.hostname or _public.path not in {"", "/"}:
    raise ImproperlyConfigured(f"PUBLIC_URL={PUBLIC_URL!r} must be an origin such as https://mcp.example.com")
PUBLIC_HOST = _public.hostname
PUBLIC_IS_LOOPBACK = PUBLIC_HOST in LOOPBACK_HOSTS

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS") or sorted({PUBLIC_HOST, "localhost", "127.0.0.1", "[::1]"})
CSRF_TRUSTED_ORIGINS = [PUBLIC_URL]

if DEBUG and not PUBLIC_IS_LOOPBACK:
    raise ImproperlyConfigured(
        f"DEBUG is on while PUBLIC_URL ({PUBLIC_URL}) is not a loopback address. "
        "Set DEBUG=false for a server others can reach."
    )
if not DEBUG:
    if SECRET_KEY == DEV_SECRET_KEY or len(SECRET_KEY) < 32:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set to a random value of at least 32 characters when DEBUG is false: "
            f"set it in {where_set('DEBUG')} "
            '(python3 -c "import secrets; print(secrets.token_urlsafe(50))"), '
            "or set DEBUG=true there for local development."
        )
    if "*" in ALLOWED_HOSTS:
        raise ImproperlyConfigured("ALLOWED_HOSTS must list host names, not '*'.")
    if _public.scheme != "https" and not PUBLIC_IS_LOOPBACK:
        raise ImproperlyConfigured(f"PUBLIC_URL ({PUBLIC_URL}) must use https for a non-loopback host.")

# Behind a reverse proxy that terminates TLS: trust X-Forwarded-Proto (and -For for the
# caller's address: registration limits, login throttling, /metrics). Only turn this on when a
# proxy you run sets those headers.
BEHIND_PROXY = env_bool("BEHIND_PROXY", False)
if BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    USE_X_FORWARDED_HOST = False  # PUBLIC_URL, not a forwarded header, names the origin

if _public.scheme == "https":
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", BEHIND_PROXY)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 3600)
    # includeSubDomains covers only names under PUBLIC_URL's host (say *.mcp.example.com),
    # which a dedicated MCP host does not serve over http anyway.
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    # Preloading is a commitment for the whole registrable domain that takes months to undo;
    # only its owner can make it, so it is opt-in and its deploy-check warning is silenced below.
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

SILENCED_SYSTEM_CHECKS = [
    # http redirect URIs stay allowed because MCP clients (mcp-remote, the Inspector) use RFC 8252
    # loopback callbacks such as http://localhost:<port>/oauth/callback; registration refuses
    # http on any other host (oauthapp.registration).
    "oauth2_provider.W008",
    # HSTS preload: see SECURE_HSTS_PRELOAD above.
    "security.W021",
    # axes' middleware only swaps the page answering a throttled login for a lockout page;
    # ours answers it exactly as a wrong password (oauthapp.throttle), which the login view does.
    "axes.W002",
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "corsheaders",
    "oauth2_provider",
    "social_django",
    "axes",
    "channels",
    "oauthapp",
    "mcpapp",
]

MIDDLEWARE = [
    "mcpapp.observability.RequestMetricsMiddleware",  # first: it times and counts everything
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "oauthapp.middleware.FrameAncestorsMiddleware",
    "oauthapp.middleware.SocialAuthErrorMiddleware",
    # A database or cache outage in a view: 503 (OAuth JSON or a short page); a value the
    # database refuses: 400. Never a 500.
    "oauthapp.middleware.BackendErrorMiddleware",
]

ROOT_URLCONF = "mcpsite.urls"
ASGI_APPLICATION = "mcpsite.asgi.application"
WSGI_APPLICATION = None
APPEND_SLASH = False  # POST paths must never answer with a trailing-slash redirect

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "oauthapp.context_processors.site",
            ],
        },
    },
]

# --- Data stores ----------------------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DATABASES = {"default": env_database("DATABASE_URL", DATABASE_URL, conn_health_checks=True)}
_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
# Seconds a thread keeps its database connection: the tool, token-check and audit threads
# reuse theirs. A PostgreSQL connection costs a few milliseconds to open; SQLite's nothing.
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60 if _POSTGRES else 0)
if _POSTGRES:
    # A database that does not answer must not hold a thread forever: give up connecting
    # after DATABASE_CONNECT_TIMEOUT seconds, and (if set) cancel a statement that runs longer
    # than DATABASE_STATEMENT_TIMEOUT_MS (off by default: a long migration would hit it).
    DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = env_int(
        "DATABASE_CONNECT_TIMEOUT", 5, minimum=1
    )
    _statement_timeout = env_int("DATABASE_STATEMENT_TIMEOUT_MS", 0)
    if _statement_timeout:
        DATABASES["default"]["OPTIONS"]["options"] = f"-c statement_timeout={_statement_timeout}"
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and a busy timeout let the async transports and the web pages share the file;
    # IMMEDIATE transactions take the write lock up front, so two writers queue on the busy
    # timeout instead of one failing at once with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE"}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    try:
        parse_redis_url(REDIS_URL)
    except ValueError as exc:  # redis-py's own reason, which never repeats the URL (or its password)
        raise ImproperlyConfigured(
            f"REDIS_URL (from {where_set('REDIS_URL')}) is not a Redis URL: {exc} "
            "(for example redis://host:6379/0)."
        ) from None
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            # Fail fast rather than hang a request when Redis is unreachable or hangs: it
            # answers in milliseconds, and each cache call of a request may wait this long.
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# MCP traffic between workers (forwarded requests, token revocations) goes over Redis
# directly (mcpapp.bus), one subscription per worker; nothing uses a channel layer.

# --- Auth -----------------------------------------------------------------------------------

AUTHENTICATION_BACKENDS = [
    # First: refuses a throttled login before any password is checked, after hashing the
    # submitted one as a wrong password would be (oauthapp.throttle).
    "oauthapp.throttle.LoginThrottleBackend",
    "oauthapp.github.GithubBackend",  # always listed, so GitHub sessions survive a config change
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
    "oauthapp.hashers.ClientSecretHasher",
]
LOGIN_URL = "login"

# Login throttling (django-axes) on /login and /admin/login/: LOGIN_FAILURE_LIMIT failures
# lock that username from that address; LOGIN_ADDRESS_FAILURE_LIMIT failures from one address
# (any usernames) lock the address. Locks last LOGIN_LOCKOUT_SECONDS; operators see and lift
# them in admin (Axes → Access attempts: delete the row).
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_ADDRESS_FAILURE_LIMIT = env_int("LOGIN_ADDRESS_FAILURE_LIMIT", 30, minimum=LOGIN_FAILURE_LIMIT)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(seconds=LOGIN_LOCKOUT_SECONDS)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]  # order matters: see the handler
AXES_HANDLER = "oauthapp.throttle.LoginThrottleHandler"
AXES_CLIENT_IP_CALLABLE = "oauthapp.throttle.client_address"  # BEHIND_PROXY aware
AXES_RESET_ON_SUCCESS = True
# A locked-out user who keeps trying does not extend their own lock.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_VERBOSE = False
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

# --- OAuth 2.1 authorization server (django-oauth-toolkit) ----------------------------------

MCP_SCOPE = "mcp"
# The scopes a token needs on /mcp and /sse (space- or comma-separated): `mcp` by default; an
# operator may add scopes of their own. Each is offered by the authorization server and granted
# by default, named in the 401 challenge and the protected-resource metadata, and a token that
# lacks any gets 403 insufficient_scope naming every missing one. Personal tokens carry them all.
MCP_REQUIRED_SCOPES = list(
    dict.fromkeys(scope for scope in re.split(r"[\s,]+", env_str("MCP_REQUIRED_SCOPES", MCP_SCOPE)) if scope)
)
if not MCP_REQUIRED_SCOPES:
    raise ImproperlyConfigured("MCP_REQUIRED_SCOPES must name at least one scope (the default is mcp).")
for _scope in MCP_REQUIRED_SCOPES:
    # RFC 6749 section 3.3: printable ASCII without space, double quote and backslash.
    if not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", _scope):
        raise ImproperlyConfigured(f"MCP_REQUIRED_SCOPES: {_scope!r} is not a valid OAuth scope")
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauthapp.Application"
# The toolkit's own token models, named so our models can point at them (swappable models).
OAUTH2_PROVIDER_ACCESS_TOKEN_MODEL = "oauth2_provider.AccessToken"
OAUTH2_PROVIDER_REFRESH_TOKEN_MODEL = "oauth2_provider.RefreshToken"
ACCESS_TOKEN_LIFETIME = env_int("ACCESS_TOKEN_LIFETIME", 3600, minimum=120)
REFRESH_TOKEN_LIFETIME = env_int("REFRESH_TOKEN_LIFETIME", 30 * 24 * 3600, minimum=ACCESS_TOKEN_LIFETIME)
AUTHORIZATION_CODE_LIFETIME = env_int("AUTHORIZATION_CODE_LIFETIME", 60, minimum=10)

OAUTH2_PROVIDER = {
    "SCOPES": {
        MCP_SCOPE: "Use this server's MCP tools as you",
        **{
            scope: f"The {scope} scope, which this server's MCP endpoints require"
            for scope in MCP_REQUIRED_SCOPES
            if scope != MCP_SCOPE
        },
    },
    "DEFAULT_SCOPES": MCP_REQUIRED_SCOPES,
    "OAUTH2_VALIDATOR_CLASS": "oauthapp.validators.MCPOAuth2Validator",
    "APPLICATION_ADMIN_CLASS": "oauthapp.admin.ApplicationAdmin",
    "ACCESS_TOKEN_ADMIN_CLASS": "oauthapp.admin.AccessTokenAdmin",
    "REFRESH_TOKEN_ADMIN_CLASS": "oauthapp.admin.RefreshTokenAdmin",
    "OIDC_ISS_ENDPOINT": PUBLIC_URL,
    "ACCESS_TOKEN_EXPIRE_SECONDS": ACCESS_TOKEN_LIFETIME,
    "REFRESH_TOKEN_EXPIRE_SECONDS": REFRESH_TOKEN_LIFETIME,
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": AUTHORIZATION_CODE_LIFETIME,
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    "PKCE_REQUIRED": True,
    "ALLOWED_REDIRECT_URI_SCHEMES": ["http", "https"],
    "ALLOW_LOCALHOST_LOOPBACK": True,
    "CLIENT_SECRET_HASHER": "client_secret_sha256",
    "REQUEST_APPROVAL_PROMPT": "force",  # our consent memory decides when to skip the page
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    # The toolkit's own grace period needs plaintext tokens at rest (its check E001); ours,
    # REFRESH_TOKEN_GRACE_SECONDS below, keeps what it must return sealed instead.
    "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
    "COMPLIANT_BCP_RFC9700_REFRESH_TOKEN": True,
    "COMPLIANT_BCP_RFC9700_PKCE_REQUIRED": True,
    "DCR_ENABLED": True,
    "DCR_REGISTRATION_PERMISSION_CLASSES": ("oauth2_provider.dcr.AllowAllDCRPermission",),
    "DCR_REGISTRATION_TOKEN_EXPIRE_SECONDS": REFRESH_TOKEN_LIFETIME,
    "OAUTH2_RESPONSE_TYPES_SUPPORTED": ["code"],
    "OAUTH2_GRANT_TYPES_SUPPORTED": ["authorization_code", "refresh_token"],
    "OAUTH2_TOKEN_ENDPOINT_AUTH_METHODS_SUPPORTED": ["none", "client_secret_basic", "client_secret_post"],
    "OAUTH2_PROTECTED_RESOURCE_NAME": env_str("MCP_SERVER_NAME", "Django MCP server"),
}

# Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document): a client whose
# client_id is an https URL is fetched, validated and cached by django-oauth-toolkit's own
# resolver (oauth2_provider.cimd: SSRF-safe fetch, size and time limits, Cache-Control ages,
# failure backoff, in-flight cap); oauthapp.cimd adds this server's document policy.
CIMD_ENABLED = env_bool("CIMD_ENABLED", True)
# Fetch documents from http(s)://127.0.0.1, localhost or [::1] too: local development and the
# tests. Accepted only with DEBUG=true (which itself needs a loopback PUBLIC_URL), i.e. on a
# development server only this machine uses: no remote caller can make a server others reach
# fetch from its own loopback services.
CIMD_ALLOW_LOOPBACK = env_bool("CIMD_ALLOW_LOOPBACK", False)
if CIMD_ALLOW_LOOPBACK and not (DEBUG and PUBLIC_IS_LOOPBACK):
    raise ImproperlyConfigured(
        "CIMD_ALLOW_LOOPBACK=true is for local development only; "
        "it needs DEBUG=true (and so a loopback PUBLIC_URL)."
    )
CIMD_ALLOWED_HOSTS = env_list("CIMD_ALLOWED_HOSTS")
_cimd_min_age = env_int("CIMD_CACHE_MIN_SECONDS", 300, minimum=1)
_cimd_max_age = env_int("CIMD_CACHE_MAX_SECONDS", 86400, minimum=1)
if _cimd_min_age > _cimd_max_age:
    raise ImproperlyConfigured("CIMD_CACHE_MIN_SECONDS must not exceed CIMD_CACHE_MAX_SECONDS.")
OAUTH2_PROVIDER.update(
    {
        "CIMD_ENABLED": CIMD_ENABLED,
        "CIMD_METADATA_FETCHER": "oauthapp.cimd.MetadataFetcher",
        # Any host by default (Claude, ChatGPT, VS Code publish theirs); a list narrows it.
        "CIMD_REGISTRATION_PERMISSION_CLASSES": (
            ("oauth2_provider.cimd.HostAllowlistCIMDPermission",)
            if CIMD_ALLOWED_HOSTS
            else ("oauth2_provider.cimd.AllowAllCIMDPermission",)
        ),
        "CIMD_ALLOWED_HOSTS": CIMD_ALLOWED_HOSTS,
        "CIMD_FETCH_TIMEOUT_SECONDS": env_int("CIMD_FETCH_TIMEOUT_SECONDS", 5, minimum=1),
        "CIMD_MAX_DOCUMENT_SIZE": env_int("CIMD_MAX_DOCUMENT_BYTES", 16 * 1024, minimum=1024),
        "CIMD_METADATA_MIN_AGE_SECONDS": _cimd_min_age,
        "CIMD_METADATA_MAX_AGE_SECONDS": _cimd_max_age,
        "CIMD_FAILURE_BACKOFF_SECONDS": env_int("CIMD_FAILURE_BACKOFF_SECONDS", 60, minimum=1),
        "CIMD_MAX_CONCURRENT_FETCHES": env_int("CIMD_MAX_CONCURRENT_FETCHES", 10, minimum=1),
    }
)

# RFC 8252 section 7.1 private-use URI scheme redirects for native apps, which registration
# accepts only when listed here: an exact redirect URI, or a prefix ending in `*`
# (`com.example.app:/*`). javascript:, data:, file: and the like are refused whatever is listed.
NATIVE_REDIRECT_URIS = env_list("NATIVE_REDIRECT_URIS", "cursor://anysphere.cursor-mcp/oauth/callback")
for _entry in NATIVE_REDIRECT_URIS:
    _scheme = _entry.partition(":")[0].lower()
    if not re.match(r"^[a-z][a-z0-9+.-]*:.", _entry, re.IGNORECASE) or _scheme in {"http", "https"}:
        raise ImproperlyConfigured(
            f"NATIVE_REDIRECT_URIS entry {_entry!r} must be a private-use scheme URI such as "
            "com.example.app:/callback (https and loopback http redirects need no listing)."
        )

# A refresh token presented again within this many seconds of its rotation (a client that
# retried, two tabs) gets the tokens its first use minted; after it, reuse revokes the family.
REFRESH_TOKEN_GRACE_SECONDS = env_int("REFRESH_TOKEN_GRACE_SECONDS", 5)
# Bodies of /token, /revoke and /introspect above this are refused (413) before parsing.
OAUTH_MAX_BODY_BYTES = env_int("OAUTH_MAX_BODY_BYTES", 64 * 1024, minimum=1024)
# Seconds a client is told to wait (Retry-After) when the database is down.
OUTAGE_RETRY_AFTER_SECONDS = env_int("OUTAGE_RETRY_AFTER_SECONDS", 5, minimum=1)
# OAuth events (admin: OAuth events) older than this are deleted by `prune_expired`.
OAUTH_EVENT_RETENTION_DAYS = env_int("OAUTH_EVENT_RETENTION_DAYS", 90, minimum=1)

# Dynamic client registration policy (RFC 7591): anonymous, so capped and rate limited.
REGISTRATION_MAX_BODY_BYTES = env_int("REGISTRATION_MAX_BODY_BYTES", 16 * 1024, minimum=1024)
REGISTRATION_RATE_LIMIT = env_int("REGISTRATION_RATE_LIMIT", 30)  # per client address per window
REGISTRATION_RATE_WINDOW = env_int("REGISTRATION_RATE_WINDOW", 3600, minimum=1)
# A public client registering again from the same address with exactly the same metadata within
# this many seconds gets its earlier client back instead of a new one (0 = always a new client).
REGISTRATION_REUSE_WINDOW = env_int("REGISTRATION_REUSE_WINDOW", 86400)

# On a development server (loopback PUBLIC_URL) the developer's own tools register from a
# loopback address again and again (every Inspector run, every `rm -rf ~/.mcp-auth`): they get
# this far higher limit instead. Every other address, and every address of a public server,
# keeps REGISTRATION_RATE_LIMIT.
REGISTRATION_LOOPBACK_RATE_LIMIT = env_int("REGISTRATION_LOOPBACK_RATE_LIMIT", 1000)

# CORS for browser-based MCP clients: only the discovery, registration and token endpoints.
CORS_ALLOW_ALL_ORIGINS = True
CORS_URLS_REGEX = r"^/(\.well-known/.*|register|token|revoke)$"
CORS_ALLOW_HEADERS = ["authorization", "content-type", "mcp-protocol-version"]

# --- MCP resource server ---------------------------------------------------------------------

MCP_SERVER_NAME = env_str("MCP_SERVER_NAME", "Django MCP server")
# How long a checked bearer token is kept in a worker's memory. Revocation reaches every
# worker at once through Redis; this bounds changes made behind the server's back (SQL).
MCP_TOKEN_CACHE_SECONDS = env_int("MCP_TOKEN_CACHE_SECONDS", 30)
MCP_MAX_BODY_BYTES = env_int("MCP_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
MCP_KEEPALIVE_SECONDS = env_int("MCP_KEEPALIVE_SECONDS", 15, minimum=1)
MCP_AUTH_RECHECK_SECONDS = env_int("MCP_AUTH_RECHECK_SECONDS", 5, minimum=1)
MCP_SESSION_IDLE_SECONDS = env_int("MCP_SESSION_IDLE_SECONDS", 3600, minimum=10)
# SSE `retry` (milliseconds) sent in the priming event of Streamable HTTP streams, so a client
# whose stream is closed reconnects with Last-Event-ID after that long (0: none sent).
MCP_SSE_RETRY_MS = env_int("MCP_SSE_RETRY_MS", 1000)
# What a session keeps for resumption: its last this many events, for at most this long.
MCP_SSE_REPLAY_EVENTS = env_int("MCP_SSE_REPLAY_EVENTS", 200, minimum=1)
MCP_SSE_REPLAY_SECONDS = env_int("MCP_SSE_REPLAY_SECONDS", 300, minimum=1)
# Threads for plain (sync) tools; each keeps its database connection.
MCP_TOOL_THREADS = env_int("MCP_TOOL_THREADS", 8, minimum=1)
# Tool-call audit records are buffered and written in batches: at most this many waiting
# (while the database is unreachable; past it records are dropped, logged and counted),
# written every this many milliseconds, and spooled to this folder if the database is down
# when the worker stops (the next worker writes them).
MCP_AUDIT_BUFFER = env_int("MCP_AUDIT_BUFFER", 100_000, minimum=100)
MCP_AUDIT_FLUSH_MS = env_int("MCP_AUDIT_FLUSH_MS", 250, minimum=10)
MCP_AUDIT_SPOOL_DIR = env_str("MCP_AUDIT_SPOOL_DIR") or str(BASE_DIR / "var" / "audit-spool")
# On SIGTERM a worker stops taking new sessions and gives in-flight requests this long to
# finish (keep it below the container's stop_grace_period; docker-compose.yml sets 30 s).
MCP_DRAIN_SECONDS = env_int("MCP_DRAIN_SECONDS", 20, minimum=0)
# Browser origins allowed to call /mcp and /sse besides PUBLIC_URL and loopback origins.
MCP_ALLOWED_ORIGINS = env_list("MCP_ALLOWED_ORIGINS")
# The official conformance suite's tools, resources and prompts; for testing only.
MCP_CONFORMANCE_FIXTURES = env_bool("MCP_CONFORMANCE_FIXTURES", False)

# /metrics (Prometheus): staff users, these addresses (CIDRs; with BEHIND_PROXY the client
# address the proxy forwards), or `Authorization: Bearer <METRICS_TOKEN>`. The default lets
# only this machine in.
METRICS_TOKEN = env_str("METRICS_TOKEN")
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", "127.0.0.1/32,::1/128")
try:
    METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network(value, strict=False) for value in METRICS_ALLOWED_IPS]
except ValueError as exc:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_IPS: {exc}") from exc

# Cleanup (`manage.py prune_expired`, run daily by the compose `prune` service): dynamically
# registered clients unused for this many days, or never used this many days after
# registering, are deleted unless they still hold a usable token.
CLIENT_UNUSED_DAYS = env_int("CLIENT_UNUSED_DAYS", 90, minimum=1)
CLIENT_NEVER_USED_DAYS = env_int("CLIENT_NEVER_USED_DAYS", 1, minimum=1)

# --- GitHub login (social-auth) --------------------------------------------------------------

# "Log in with GitHub" appears when both the OAuth App's id and secret are set. Register the
# callback URL {PUBLIC_URL}/complete/github/ in the GitHub OAuth App (README: "Log in with GitHub").
GITHUB_CLIENT_ID = env_str("GITHUB_CLIENT_ID")
GITHUB_CLIENT_SECRET = env_str("GITHUB_CLIENT_SECRET")
if bool(GITHUB_CLIENT_ID) != bool(GITHUB_CLIENT_SECRET):
    raise ImproperlyConfigured("Set both GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET, or neither.")
GITHUB_ENABLED = bool(GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET)


def _github_url(name: str, default: str) -> str:
    """A GitHub endpoint base: https, or http only on a loopback host (the tests' fake GitHub)."""
    value = env_str(name, default).rstrip("/")
    parts = urlsplit(value)
    loopback = parts.hostname in LOOPBACK_HOSTS
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.query or parts.fragment:
        raise ImproperlyConfigured(f"{name}={value!r} must be a URL such as {default}")
    if parts.scheme != "https" and not loopback:
        raise ImproperlyConfigured(f"{name}={value!r} must use https")
    return value


# GitHub Enterprise Server: GITHUB_BASE_URL=https://ghe.example.com and
# GITHUB_API_URL=https://ghe.example.com/api/v3. The tests point both at a fake on 127.0.0.1.
GITHUB_BASE_URL = _github_url("GITHUB_BASE_URL", "https://github.com")
GITHUB_API_URL = _github_url("GITHUB_API_URL", "https://api.github.com")
GITHUB_API_TIMEOUT = env_int("GITHUB_API_TIMEOUT", 10, minimum=1)

# Who may log in with GitHub, managed from the environment. Both empty: any GitHub user.
# Both set: the user must pass both. A refused user gets no account.
GITHUB_ALLOWED_USERS = [name.lower() for name in env_list("GITHUB_ALLOWED_USERS")]
GITHUB_REQUIRED_ORG = env_str("GITHUB_REQUIRED_ORG")
# The policy is checked again, through GitHub's API, for a GitHub-only user's refresh, at
# /authorize, and when they make or use a personal token, at most this often per user. While
# GitHub cannot be reached access goes on, up to GITHUB_POLICY_MAX_UNVERIFIED_SECONDS after the
# last successful check; then refreshes and /authorize answer 503.
GITHUB_POLICY_RECHECK_SECONDS = env_int("GITHUB_POLICY_RECHECK_SECONDS", 300)
GITHUB_POLICY_MAX_UNVERIFIED_SECONDS = env_int("GITHUB_POLICY_MAX_UNVERIFIED_SECONDS", 86400)
_GITHUB_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
for _name in [*GITHUB_ALLOWED_USERS, *([GITHUB_REQUIRED_ORG] if GITHUB_REQUIRED_ORG else [])]:
    if not _GITHUB_NAME.match(_name):
        raise ImproperlyConfigured(
            f"{_name!r} (GITHUB_ALLOWED_USERS / GITHUB_REQUIRED_ORG) is not a GitHub name"
        )

SOCIAL_AUTH_GITHUB_KEY = GITHUB_CLIENT_ID
SOCIAL_AUTH_GITHUB_SECRET = GITHUB_CLIENT_SECRET
SOCIAL_AUTH_GITHUB_AUTHORIZATION_URL = f"{GITHUB_BASE_URL}/login/oauth/authorize"
SOCIAL_AUTH_GITHUB_ACCESS_TOKEN_URL = f"{GITHUB_BASE_URL}/login/oauth/access_token"
# read:org lets the membership check see private memberships of the required organisation.
SOCIAL_AUTH_GITHUB_SCOPE = ["read:user", "user:email", *(["read:org"] if GITHUB_REQUIRED_ORG else [])]
SOCIAL_AUTH_URL_NAMESPACE = "social"
SOCIAL_AUTH_JSONFIELD_ENABLED = True
SOCIAL_AUTH_REQUESTS_TIMEOUT = GITHUB_API_TIMEOUT
# Failures land on the login page with the reason (oauthapp.middleware), in DEBUG too: a
# cancelled login is not a server error.
SOCIAL_AUTH_RAISE_EXCEPTIONS = False
SOCIAL_AUTH_LOGIN_ERROR_URL = "login"
# GitHub names a new user; later GitHub logins never rewrite a user's names (nor, by default, email).
SOCIAL_AUTH_PROTECTED_USER_FIELDS = ["first_name", "last_name"]
SOCIAL_AUTH_PIPELINE = (
    "social_core.pipeline.social_auth.social_details",
    "social_core.pipeline.social_auth.social_names",
    "social_core.pipeline.social_auth.social_uid",
    "social_core.pipeline.social_auth.auth_allowed",
    # Before any lookup or write: a refused GitHub user neither logs in nor gets a row.
    "oauthapp.github.enforce_access_policy",
    "social_core.pipeline.social_auth.social_user",
    "social_core.pipeline.user.get_username",
    # No associate_by_email: a GitHub email must never take over a local account.
    "social_core.pipeline.user.create_user",
    "social_core.pipeline.social_auth.associate_user",
    # Replaces load_extra_data: the GitHub token is stored encrypted, never in extra_data.
    "oauthapp.github.store_extra_data_and_token",
    "social_core.pipeline.user.user_details",
)

# --- Static files, i18n, logging -------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT") or BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG and env_bool("COLLECTED_STATIC", False)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not env_bool("COLLECTED_STATIC", False)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# LOG_FORMAT=json writes one JSON object per line (for a log pipeline), each with the
# request id that also travels with a request forwarded to another worker.
LOG_FORMAT = env_str("LOG_FORMAT", "plain").lower()
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} must be plain or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "mcpapp.observability.RequestIdFilter"},
        "outage": {"()": "oauthapp.outage.OutageLogFilter"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id", "outage"],
        }
    },
    "root": {"handlers": ["console"], "level": env_log_level("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "oauth2_provider": {"level": env_log_level("OAUTH_LOG_LEVEL", "WARNING")},
        # The SDK logs every session it opens and closes at INFO.
        "mcp": {"level": env_log_level("MCP_SDK_LOG_LEVEL", "WARNING")},
        # axes logs every failed login at WARNING; the OAuth event log records them instead.
        "axes": {"level": env_log_level("AXES_LOG_LEVEL", "ERROR")},
    },
}
