"""RFC 7591 client metadata: parsed and checked against this server's policy.

MCP clients register anonymously, so the policy is strict: redirect URIs must be https, or
http on a loopback host (any port matches at authorization time, RFC 8252), or a native
app's private-use URI that the operator listed in NATIVE_REDIRECT_URIS (RFC 8252 section
7.1; Cursor's by default); dangerous schemes, fragments, credentials and malformed URIs are
refused. Unknown metadata is ignored; known metadata of the wrong shape is refused. Nothing
unset is ever echoed back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post")
MAX_REDIRECT_URIS = 10
MAX_URI_LENGTH = 2000
URL_FIELDS = ("client_uri", "logo_uri", "tos_uri", "policy_uri")
TEXT_FIELDS = ("software_id", "software_version")
# Schemes that run code, read local files or reach browser internals: never a redirect URI,
# whatever NATIVE_REDIRECT_URIS lists.
DANGEROUS_SCHEMES = frozenset(
    {
        "javascript",
        "vbscript",
        "livescript",
        "data",
        "file",
        "blob",
        "filesystem",
        "about",
        "view-source",
        "jar",
        "mhtml",
        "intent",
    }
)


class RegistrationError(Exception):
    """An RFC 7591 section 3.2.2 error: `error` is the code, the message its description."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True)
class ClientMetadata:
    redirect_uris: list[str]
    token_endpoint_auth_method: str
    grant_types: list[str]
    response_types: list[str]
    scope: str
    client_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"

    def stored_metadata(self) -> dict[str, Any]:
        """What `Application.registration_metadata` keeps of this registration."""
        return {
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "grant_types": self.grant_types,
            "scope": self.scope,
            **self.extra,
        }


def redirect_uri_problem(uri: object) -> str | None:
    """Why `uri` may not be registered as a redirect URI, or None if it may."""
    if not isinstance(uri, str) or not uri:
        return "each redirect URI must be a non-empty string"
    if len(uri) > MAX_URI_LENGTH:
        return f"redirect URIs are limited to {MAX_URI_LENGTH} characters"
    if any(ch.isspace() or ord(ch) < 0x20 for ch in uri):
        return "redirect URIs may not contain whitespace or control characters"
    if "#" in uri:
        return "redirect URIs may not contain a fragment"
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return "redirect URI is malformed"
    del port
    scheme = parts.scheme.lower()
    if scheme in DANGEROUS_SCHEMES:
        return f"the {scheme} scheme is never allowed"
    if scheme not in {"http", "https"}:
        if native_redirect_allowed(uri):
            return "redirect URIs may not carry credentials" if "@" in parts.netloc else None
        return (
            f"the {scheme or 'empty'!s} scheme is not allowed; use https, or http on a loopback host "
            "(a native app's private-use URI must be allowed by the operator)"
        )
    if not parts.hostname:
        return "redirect URI needs a host"
    if "@" in parts.netloc:
        return "redirect URIs may not carry credentials"
    if scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        return "http redirect URIs are allowed only on localhost, 127.0.0.1 or [::1]; use https"
    return None


def native_redirect_allowed(uri: str) -> bool:
    """Whether `uri` is a private-use URI scheme redirect the operator allows (RFC 8252 7.1).

    NATIVE_REDIRECT_URIS holds exact URIs, or prefixes ending in `*`. http(s) URIs are never
    native redirects (they follow the https / loopback rules), nor are dangerous schemes.
    """
    scheme = uri.partition(":")[0].lower()
    if scheme in DANGEROUS_SCHEMES or scheme in {"http", "https"} or not scheme:
        return False
    for entry in settings.NATIVE_REDIRECT_URIS:
        if entry.endswith("*") and uri.startswith(entry[:-1]):
            return True
        if uri == entry:
            return True
    return False


def _string_list(data: dict[str, Any], name: str, default: list[str]) -> list[str]:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RegistrationError("invalid_client_metadata", f"{name} must be an array of strings")
    return value


def _optional_string(data: dict[str, Any], name: str) -> str:
    """A string field where absent and null mean unset; any other non-string is refused."""
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RegistrationError("invalid_client_metadata", f"{name} must be a string")
    return value


def _storable_text_problem(value: object) -> str | None:
    """Why a decoded JSON value holds a string no database can store, or None.

    JSON can carry lone surrogates (`"\\ud800"`), which are not Unicode text and cannot be
    encoded as UTF-8, and NUL characters, which PostgreSQL refuses in text columns.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "strings may not contain NUL characters"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "strings must be valid Unicode (no lone surrogates)"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def parse_client_metadata(data: object) -> ClientMetadata:
    """Validate a registration request body (already decoded from JSON)."""
    if not isinstance(data, dict):
        raise RegistrationError("invalid_client_metadata", "the request body must be a JSON object")
    problem = _storable_text_problem(data)
    if problem:
        raise RegistrationError("invalid_client_metadata", problem)

    redirect_uris = data.get("redirect_uris")
    if not isinstance(redirect_uris, list) or not redirect_uris:
        raise RegistrationError("invalid_redirect_uri", "redirect_uris must be a non-empty array")
    if len(redirect_uris) > MAX_REDIRECT_URIS:
        raise RegistrationError("invalid_redirect_uri", f"at most {MAX_REDIRECT_URIS} redirect URIs")
    for uri in redirect_uris:
        problem = redirect_uri_problem(uri)
        if problem:
            raise RegistrationError("invalid_redirect_uri", f"{str(uri)[:200]!r}: {problem}")

    auth_method = _optional_string(data, "token_endpoint_auth_method") or "client_secret_basic"
    if auth_method not in AUTH_METHODS:
        raise RegistrationError(
            "invalid_client_metadata",
            f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}",
        )

    grant_types = _string_list(data, "grant_types", ["authorization_code"])
    if "authorization_code" not in grant_types or not set(grant_types) <= {
        "authorization_code",
        "refresh_token",
    }:
        raise RegistrationError(
            "invalid_client_metadata", "grant_types must be authorization_code, optionally with refresh_token"
        )
    response_types = _string_list(data, "response_types", ["code"])
    if response_types != ["code"]:
        raise RegistrationError("invalid_client_metadata", 'response_types must be ["code"]')

    scope = _optional_string(data, "scope")
    # Unknown scopes are dropped rather than refused (RFC 7591 section 2 lets the server
    # replace them): clients that ask for `openid profile` still get a working registration.
    provider: dict[str, Any] = settings.OAUTH2_PROVIDER
    known: dict[str, str] = provider["SCOPES"]
    defaults: list[str] = provider["DEFAULT_SCOPES"]
    granted = [s for s in dict.fromkeys(scope.split()) if s in known] or list(defaults)

    client_name = _optional_string(data, "client_name")
    if len(client_name) > 255:
        raise RegistrationError("invalid_client_metadata", "client_name must be a string of at most 255")

    extra: dict[str, Any] = {}
    for name in URL_FIELDS:
        value = data.get(name)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or len(value) > MAX_URI_LENGTH:
            raise RegistrationError("invalid_client_metadata", f"{name} must be a URL string")
        if urlsplit(value).scheme not in {"http", "https"}:
            raise RegistrationError("invalid_client_metadata", f"{name} must be an http(s) URL")
        extra[name] = value
    for name in TEXT_FIELDS:
        value = data.get(name)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or len(value) > 255:
            raise RegistrationError("invalid_client_metadata", f"{name} must be a short string")
        extra[name] = value
    contacts = data.get("contacts")
    if contacts:
        if not isinstance(contacts, list) or not all(isinstance(c, str) and len(c) < 255 for c in contacts):
            raise RegistrationError("invalid_client_metadata", "contacts must be an array of strings")
        extra["contacts"] = contacts[:10]

    return ClientMetadata(
        redirect_uris=list(dict.fromkeys(redirect_uris)),
        token_endpoint_auth_method=auth_method,
        grant_types=list(dict.fromkeys(grant_types)),
        response_types=response_types,
        scope=" ".join(granted),
        client_name=client_name.strip(),
        extra=extra,
    )
