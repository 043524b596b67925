"""Who is calling: one type from the Authorization header to the tool.

The bearer-token layer builds a `Caller` once per token (and caches it with the token check,
the user's permissions included);
it travels on the ASGI scope as `scope["mcp.caller"]`, across workers as `Caller.encode()`,
and reaches tools as `current_caller()`. The SDK sees the same principal as its own
`AuthenticatedUser` (`scope["user"]`), which binds a session to the client and user that
created it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken as SDKAccessToken

SCOPE_KEY = "mcp.caller"


@dataclass(frozen=True, slots=True)
class Caller:
    """A checked bearer token: the user, the OAuth client, and what the token allows."""

    user_id: int
    username: str
    application_id: int
    client_id: str
    client_name: str
    scopes: tuple[str, ...]
    # The access token row (by primary key and checksum, never its value).
    token_id: int
    token_checksum: str
    # RFC 8707 resources the token is bound to (empty: any resource of this server).
    resources: tuple[str, ...]
    expires_at: float
    issuer: str
    # The user's Django permissions ("app.codename"), read with the token: listing and calling
    # permission-gated tools needs no database read. Changing them drops the cached check.
    permissions: frozenset[str] = frozenset()
    sdk_user: AuthenticatedUser = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once per cached token check, not once per request.
        token = SDKAccessToken(
            token=self.token_checksum,
            client_id=self.client_id,
            scopes=list(self.scopes),
            expires_at=int(self.expires_at),
            subject=str(self.user_id),
            claims={"iss": self.issuer},
        )
        object.__setattr__(self, "sdk_user", AuthenticatedUser(token))

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires_at

    def encode(self) -> dict[str, Any]:
        """A plain dict for the wire between workers (the SDK view is rebuilt on arrival)."""
        data = {name: getattr(self, name) for name in _WIRE_FIELDS}
        data["permissions"] = sorted(self.permissions)
        return data

    @classmethod
    def decode(cls, data: dict[str, Any]) -> Caller:
        return cls(
            user_id=int(data["user_id"]),
            username=str(data["username"]),
            application_id=int(data["application_id"]),
            client_id=str(data["client_id"]),
            client_name=str(data["client_name"]),
            scopes=tuple(data["scopes"]),
            token_id=int(data["token_id"]),
            token_checksum=str(data["token_checksum"]),
            resources=tuple(data["resources"]),
            expires_at=float(data["expires_at"]),
            issuer=str(data["issuer"]),
            permissions=frozenset(str(name) for name in data.get("permissions", ())),
        )

    def owns(self, *, user_id: int, client_id: str) -> bool:
        """Whether this caller is the user and client a session was created by."""
        return self.user_id == user_id and self.client_id == client_id


_WIRE_FIELDS = tuple(f.name for f in fields(Caller) if f.init)


def caller_of(scope: Any) -> Caller | None:
    """The caller the bearer-token layer put on an ASGI scope (or a Starlette request's)."""
    value = scope.get(SCOPE_KEY) if hasattr(scope, "get") else None
    return value if isinstance(value, Caller) else None
