"""The official `mcp` Python SDK client, doing the whole OAuth flow against our server.

The SDK opens the authorization URL through `redirect_handler`; here a `Person` at a Browser
follows it: logs in on our login form when sent there (if they were given credentials), sees
our consent page and presses Approve, and the callback's query goes back to the SDK. The
person notes the pages they saw, so a test can tell that login and consent really happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx2
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, TokenStorage
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl

from tests.support.oauth import Browser, hidden_fields, query_of

CALLBACK = "http://localhost:33419/callback"


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


@dataclass
class Person:
    """Someone at `browser` who approves what the client asks, logging in first if asked to.

    `seen` lists the pages they went through: "login" (they filled in our login form) and
    "consent" (they pressed Approve on our consent page).
    """

    browser: Browser
    credentials: tuple[str, str] | None = None
    seen: list[str] = field(default_factory=list)

    def authorize(self, authorization_url: str) -> str:
        """Open the authorization URL; returns where our server finally sends the browser."""
        url = authorization_url
        page = self.browser.http.get(url)
        for _ in range(4):
            location = page.headers.get("location", "")
            if page.status_code == 302 and location.startswith("/login"):
                assert self.credentials is not None, "sent to the login page, with no credentials"
                page = self.browser.login(*self.credentials, next_url=query_of(location)["next"])
                assert page.status_code == 302, page.text  # a refused login stays on the page
                self.seen.append("login")
                url = urljoin(url, page.headers["location"])
                page = self.browser.http.get(url)
            elif page.status_code == 200:  # the consent page: approve
                assert 'id="authorizationForm"' in page.text, page.text
                form = hidden_fields(page.text)
                form["allow"] = "Authorize"
                self.seen.append("consent")
                page = self.browser.http.post(url, data=form)
            else:
                break
        assert page.status_code == 302, page.text
        return page.headers["location"]


def oauth_provider(
    server_url: str,
    browser: Browser,
    storage: MemoryStorage,
    *,
    client_metadata_url: str | None = None,
    redirect_uri: str = CALLBACK,
    person: Person | None = None,
) -> OAuthClientProvider:
    """The SDK's OAuth provider; with `client_metadata_url` it uses that URL as its client_id (CIMD).

    The authorization URL is opened by `person` (by default: whoever is logged in at `browser`).
    """
    captured: dict[str, str] = {}
    person = person or Person(browser)

    async def redirect_handler(authorization_url: str) -> None:
        captured["location"] = person.authorize(authorization_url)

    async def callback_handler() -> AuthorizationCodeResult:
        query = query_of(captured["location"])
        return AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))

    return OAuthClientProvider(
        server_url=server_url,
        client_metadata=OAuthClientMetadata(
            client_name="SDK test client",
            redirect_uris=[AnyUrl(redirect_uri)],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        client_metadata_url=client_metadata_url,
    )


async def call_tool(
    server_url: str,
    browser: Browser,
    tool: str,
    arguments: dict[str, Any],
    *,
    transport: str = "mcp",
    mode: str = "auto",
    storage: MemoryStorage | None = None,
    client_metadata_url: str | None = None,
    redirect_uri: str = CALLBACK,
    person: Person | None = None,
) -> tuple[Any, list[str]]:
    """Connect with the SDK (OAuth included), call one tool; returns (result, tool names)."""
    storage = storage or MemoryStorage()
    auth = oauth_provider(
        server_url,
        browser,
        storage,
        client_metadata_url=client_metadata_url,
        redirect_uri=redirect_uri,
        person=person,
    )
    async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
        if transport == "sse":
            connection = sse_client(server_url, auth=auth)
        else:
            connection = streamable_http_client(server_url, http_client=http)
        async with Client(connection, mode=mode) as client:
            tools = await client.list_tools()
            result = await client.call_tool(tool, arguments)
            return result, [t.name for t in tools.tools]
