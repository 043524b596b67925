"""Drives the OAuth flow over HTTP the way an MCP client and a person in a browser do."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

if TYPE_CHECKING:
    from tests.support.live import LiveServer

CALLBACK = "http://localhost:33418/oauth/callback"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def hidden_fields(html: str) -> dict[str, str]:
    fields = {}
    for tag in re.findall(r"<input[^>]+>", html):
        if 'type="hidden"' not in tag:
            continue
        name = re.search(r'name="([^"]+)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name:
            fields[name.group(1)] = (value.group(1) if value else "").replace("&amp;", "&")
    return fields


def query_of(location: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


class Browser:
    """A person's browser: keeps cookies, does not follow redirects by itself."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, follow_redirects=False, timeout=30)

    def login(self, username: str, password: str, next_url: str = "") -> httpx.Response:
        page = self.http.get("/login", params={"next": next_url} if next_url else None)
        assert page.status_code == 200, page.text
        return self.http.post(
            "/login",
            data={
                "username": username,
                "password": password,
                "next": next_url,
                "csrfmiddlewaretoken": csrf_from(page.text),
            },
        )

    def close(self) -> None:
        self.http.close()


@dataclass
class OAuthClient:
    """A registered client going through authorization code + PKCE."""

    base_url: str
    client_id: str = ""
    client_secret: str | None = None
    redirect_uri: str = CALLBACK
    registration: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def register(cls, base_url: str, **metadata: Any) -> OAuthClient:
        body = {
            "client_name": "Test MCP client",
            "redirect_uris": [CALLBACK],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            **metadata,
        }
        response = httpx.post(f"{base_url}/register", json=body, timeout=30)
        assert response.status_code == 201, response.text
        data = response.json()
        return cls(
            base_url=base_url,
            client_id=data["client_id"],
            client_secret=data.get("client_secret"),
            redirect_uri=body["redirect_uris"][0],
            registration=data,
        )

    def authorize_params(self, challenge: str, **extra: Any) -> dict[str, str]:
        return {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": secrets.token_urlsafe(8),
            "scope": "mcp",
            **extra,
        }

    def authorize(
        self, browser: Browser, *, approve: bool = True, **extra: Any
    ) -> tuple[dict[str, str], str]:
        """Run /authorize as a logged-in browser; returns (callback query, code_verifier)."""
        verifier, challenge = pkce_pair()
        params = self.authorize_params(challenge, **extra)
        page = browser.http.get("/authorize", params=params)
        if page.status_code == 302:  # consent remembered
            return query_of(page.headers["location"]), verifier
        assert page.status_code == 200, page.text
        form = hidden_fields(page.text)
        if approve:
            form["allow"] = "Authorize"
        answer = browser.http.post(f"/authorize?{urlencode(params)}", data=form)
        assert answer.status_code == 302, answer.text
        return query_of(answer.headers["location"]), verifier

    def token(self, **data: str) -> httpx.Response:
        auth = None
        body = {"client_id": self.client_id, **data}
        if self.client_secret:
            auth = (self.client_id, self.client_secret)
        return httpx.post(f"{self.base_url}/token", data=body, auth=auth, timeout=30)

    def exchange(self, code: str, verifier: str, **extra: str) -> httpx.Response:
        return self.token(
            grant_type="authorization_code",
            code=code,
            redirect_uri=self.redirect_uri,
            code_verifier=verifier,
            **extra,
        )

    def refresh(self, refresh_token: str) -> httpx.Response:
        return self.token(grant_type="refresh_token", refresh_token=refresh_token)


def obtain_token(base_url: str, browser: Browser, **extra: Any) -> dict[str, Any]:
    """Register, authorize (approving) and exchange: the whole flow, returning the token body."""
    client = OAuthClient.register(base_url)
    query, verifier = client.authorize(browser, **extra)
    response = client.exchange(query["code"], verifier)
    assert response.status_code == 200, response.text
    return {**response.json(), "client": client}


def register_resource_server(server: LiveServer, operator: Browser) -> OAuthClient:
    """A confidential client that an operator marks as a resource server in admin (may introspect)."""
    client = OAuthClient.register(
        server.url, token_endpoint_auth_method="client_secret_basic", client_name="Test resource server"
    )
    ((pk,),) = server.sql("SELECT id FROM oauthapp_application WHERE client_id = ?", (client.client_id,))
    admin_action(operator, "/admin/oauthapp/application/", "mark_resource_servers", pk)
    assert server.sql("SELECT is_resource_server FROM oauthapp_application WHERE id = ?", (pk,)) == [(1,)]
    return client


def introspect(introspector: OAuthClient, token: str) -> dict[str, Any]:
    """RFC 7662 introspection by an operator-marked resource server (register_resource_server)."""
    assert introspector.client_secret, "introspection needs a confidential client"
    response = httpx.post(
        f"{introspector.base_url}/introspect",
        data={"token": token},
        auth=(introspector.client_id, introspector.client_secret),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def admin_action(browser: Browser, changelist: str, action: str, *pks: int) -> httpx.Response:
    """Post the admin changelist's action form, as an operator's browser does."""
    page = browser.http.get(changelist)
    assert page.status_code == 200, page.text
    data = {
        "csrfmiddlewaretoken": csrf_from(page.text),
        "action": action,
        "index": "0",
        "_selected_action": [str(pk) for pk in pks],
    }
    response = browser.http.post(changelist, data=data)
    assert response.status_code == 302, response.text
    assert response.headers["location"] == changelist
    return response
