"""A fake GitHub on 127.0.0.1: the OAuth pages, the token endpoint and the few API calls we make.

It is the only fake in the GitHub tests. social-auth's real code (and our github_user service)
talk to it over HTTP, exactly as they talk to github.com. A test says who "logs in at GitHub"
next (`fake.sign_in_as(...)`) or that the person cancels (`fake.cancel_next()`), and reads
`fake.requests` to see what the server asked.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from tests.support.oauth import Browser, csrf_from

CLIENT_ID = "fake-github-client-id"
CLIENT_SECRET = "fake-github-client-secret"


@dataclass
class GithubUser:
    login: str
    id: int
    name: str = ""
    email: str = ""
    orgs: tuple[str, ...] = ()

    def profile(self) -> dict[str, Any]:
        return {
            "login": self.login,
            "id": self.id,
            "node_id": f"U_{self.id}",
            "type": "User",
            "name": self.name or None,
            "email": None,  # private, as for most users: the address comes from /user/emails
            "html_url": f"https://github.invalid/{self.login}",
        }


@dataclass
class FakeGithub:
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    next_user: GithubUser | None = None
    next_error: str | None = None
    codes: dict[str, GithubUser] = field(default_factory=dict)
    tokens: dict[str, GithubUser] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    # While True the API answers 503, as GitHub does in an incident (the login pages still work).
    api_unavailable: bool = False
    # Seconds the API takes to answer (a slow GitHub); the login pages answer at once.
    api_delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # --- What the person at GitHub does next ----------------------------------------------

    def sign_in_as(self, user: GithubUser) -> None:
        with self.lock:
            self.next_user, self.next_error = user, None

    def cancel_next(self, error: str = "access_denied") -> None:
        with self.lock:
            self.next_user, self.next_error = None, error

    def issue_token(self, user: GithubUser) -> str:
        """A token as the token endpoint would give it (for in-process tests of our API calls)."""
        token = f"gho_{secrets.token_urlsafe(24)}"
        with self.lock:
            self.tokens[token] = user
        return token

    def revoke_tokens_of(self, user: GithubUser) -> None:
        """The user removed this OAuth App at GitHub: GitHub no longer accepts its tokens for them."""
        with self.lock:
            for token in [token for token, owner in self.tokens.items() if owner.id == user.id]:
                del self.tokens[token]

    def paths_requested(self) -> list[str]:
        return [path for _method, path, _headers in self.requests]

    # --- Server ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}"

    def start(self) -> FakeGithub:
        fake = self

        class Handler(_Handler):
            github = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    github: FakeGithub

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        return

    # --- helpers --------------------------------------------------------------------------

    def _record(self) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        with self.github.lock:
            self.github.requests.append((self.command, parts.path, dict(self.headers.items())))
        return parts.path, parse_qs(parts.query)

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _token_user(self) -> GithubUser | None:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in {"token", "bearer"}:
            return None
        with self.github.lock:
            return self.github.tokens.get(token.strip())

    # --- endpoints ------------------------------------------------------------------------

    def do_GET(self) -> None:
        path, query = self._record()
        if path == "/login/oauth/authorize":
            return self._authorize(query)
        if self.github.api_delay:
            time.sleep(self.github.api_delay)
        if self.github.api_unavailable:
            return self._json(503, {"message": "Service Unavailable"})
        user = self._token_user()
        if user is None:
            return self._json(401, {"message": "Bad credentials"})
        if path == "/user":
            return self._json(200, user.profile())
        if path == "/user/emails":
            if not user.email:
                return self._json(200, [])
            return self._json(200, [{"email": user.email, "primary": True, "verified": True}])
        if path == "/user/orgs":
            return self._json(200, [{"login": org} for org in user.orgs])
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[0] == "orgs" and parts[2] == "members":
            org, member = parts[1], parts[3]
            if member.lower() == user.login.lower() and org.lower() in {o.lower() for o in user.orgs}:
                return self._empty(204)
            return self._json(404, {"message": "Not Found"})
        return self._json(404, {"message": "Not Found"})

    def do_POST(self) -> None:
        path, _query = self._record()
        length = int(self.headers.get("Content-Length") or 0)
        form = {key: values[0] for key, values in parse_qs(self.rfile.read(length).decode()).items()}
        if path != "/login/oauth/access_token":
            return self._json(404, {"message": "Not Found"})
        if (
            form.get("client_id") != self.github.client_id
            or form.get("client_secret") != self.github.client_secret
        ):
            return self._json(200, {"error": "incorrect_client_credentials"})
        with self.github.lock:
            user = self.github.codes.pop(form.get("code", ""), None)
        if user is None:
            return self._json(200, {"error": "bad_verification_code"})
        token = self.github.issue_token(user)
        return self._json(
            200, {"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"}
        )

    def _authorize(self, query: dict[str, list[str]]) -> None:
        params = {key: values[0] for key, values in query.items()}
        with self.github.lock:
            self.github.authorize_requests.append(params)
        if params.get("client_id") != self.github.client_id or not params.get("redirect_uri"):
            return self._json(404, {"message": "Not Found"})
        redirect_uri = params["redirect_uri"]
        state = params.get("state", "")
        with self.github.lock:
            user, error = self.github.next_user, self.github.next_error
        separator = "&" if "?" in redirect_uri else "?"
        if error is not None or user is None:
            answer = {
                "error": error or "access_denied",
                "error_description": "The user has denied your application access.",
                "state": state,
            }
            return self._redirect(f"{redirect_uri}{separator}{urlencode(answer)}")
        code = secrets.token_hex(10)
        with self.github.lock:
            self.github.codes[code] = user
        return self._redirect(f"{redirect_uri}{separator}{urlencode({'code': code, 'state': state})}")


def log_in_with_github(browser: Browser, *, next_url: str = "", page: str = "/login") -> httpx.Response:
    """Press "Log in with GitHub" (or "Link GitHub account") on `page` and go through GitHub.

    Returns our server's answer to GitHub's redirect back to /complete/github/.
    """
    shown = browser.http.get(page, params={"next": next_url} if next_url and page == "/login" else None)
    assert shown.status_code == 200, shown.text
    begin = browser.http.post(
        "/login/github/", data={"csrfmiddlewaretoken": csrf_from(shown.text), "next": next_url}
    )
    assert begin.status_code == 302, begin.text
    at_github = browser.http.get(begin.headers["location"])  # an absolute URL on the fake
    assert at_github.status_code == 302, at_github.text
    back = at_github.headers["location"]
    assert back.startswith(browser.base_url), back
    return browser.http.get(back)
