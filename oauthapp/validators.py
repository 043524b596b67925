"""django-oauth-toolkit's request validator with this server's policies added."""

from __future__ import annotations

from typing import Any

from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.scopes import get_scopes_backend
from oauthlib.oauth2.rfc6749 import errors

from . import cimd
from .selectors import resource_identifiers, resource_is_known


class MCPOAuth2Validator(OAuth2Validator):
    def validate_scopes(
        self, client_id: str, scopes: list[str], client: Any, request: Any, *args: Any, **kwargs: Any
    ) -> bool:
        """Grant the known subset of what was asked, or the default scopes.

        RFC 6749 section 3.3 lets the server issue a different scope than requested (the
        token response says which). MCP clients that know nothing of our scopes ask for
        `openid profile` or the like; refusing them would break the login for no gain.
        """
        backend = get_scopes_backend()
        available = set(backend.get_available_scopes(application=client, request=request))
        granted = [scope for scope in scopes if scope in available]
        if not granted:
            granted = list(backend.get_default_scopes(application=client, request=request))
        request.scopes = granted
        scopes[:] = granted
        return True

    def validate_redirect_uri(
        self, client_id: str, redirect_uri: str, request: Any, *args: Any, **kwargs: Any
    ) -> bool:
        """The registered URI, and a scheme still allowed: a native app's private-use scheme
        that the operator has since taken out of NATIVE_REDIRECT_URIS is refused up front
        (on our page), not after consent."""
        if not super().validate_redirect_uri(client_id, redirect_uri, request, *args, **kwargs):
            return False
        return redirect_uri.partition(":")[0].lower() in request.client.get_allowed_schemes()

    def _load_application(self, client_id: str, request: Any) -> Any:
        # The toolkit resolves only https document URLs; http ones on loopback are ours
        # (CIMD_ALLOW_LOOPBACK, local development and the tests).
        if (
            client_id.startswith("http://")
            and cimd.loopback_documents_allowed()
            and cimd.is_loopback_document_url(client_id)
        ):
            return cimd.loopback_http_application(client_id=client_id, request=request)
        return super()._load_application(client_id, request)

    def _validate_resource_uris(self, request: Any, resources: list[str]) -> None:
        """RFC 8707: a token may be bound only to this server's own resource identifiers."""
        super()._validate_resource_uris(request, resources)
        for resource in resources:
            if not resource_is_known(resource):
                raise errors.CustomOAuth2Error(
                    error="invalid_target",
                    description=(
                        f"Unknown resource {resource[:200]!r}; this server is "
                        f"{' or '.join(resource_identifiers()[2:])}"
                    ),
                    request=request,
                )
