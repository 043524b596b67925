#!/usr/bin/env python3
"""A person at a browser, for clients that open one (mcp-remote runs `$BROWSER <url>`).

usage: BROWSER=tests/support/fake_browser.py FAKE_BROWSER_USER=... FAKE_BROWSER_PASSWORD=...
       FAKE_BROWSER_LOG=/path/to/log  <client>

Given the authorization URL, it does what the user would: it is sent to the login form and
logs in, approves the client on the consent page, and follows the redirect back to the
client's callback on localhost. Each invocation appends one JSON line to FAKE_BROWSER_LOG
(the URL it was given and the pages it saw), so tests can tell whether a login happened.

Standard library only: the client may run it with whatever python3 is on PATH.
"""

from __future__ import annotations

import html
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from typing import Any


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Session:
    def __init__(self) -> None:
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(CookieJar()), NoRedirects()
        )
        self.visited: list[tuple[str, str, int]] = []

    def request(self, url: str, data: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Returns (status, Location header, body)."""
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(url, data=body, headers={"Referer": url})
        try:
            with self.opener.open(request, timeout=30) as response:
                status, location, text = response.status, "", response.read().decode()
        except urllib.error.HTTPError as error:
            status, location, text = error.code, error.headers.get("Location", ""), error.read().decode()
        self.visited.append(("POST" if data is not None else "GET", urllib.parse.urlsplit(url).path, status))
        return status, urllib.parse.urljoin(url, location) if location else "", text


def hidden_fields(page: str) -> dict[str, str]:
    fields = {}
    for tag in re.findall(r"<input[^>]+>", page):
        name = re.search(r'name="([^"]+)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if 'type="hidden"' in tag and name:
            fields[name.group(1)] = html.unescape(value.group(1)) if value else ""
    return fields


def authorize(url: str, username: str, password: str) -> Session:
    session = Session()
    status, location, page = session.request(url)
    if status == 302 and urllib.parse.urlsplit(location).path == "/login":
        status, _, page = session.request(location)
        form = hidden_fields(page)
        form.update(username=username, password=password)
        status, location, page = session.request(location, form)
        if status != 302:
            raise SystemExit(f"login failed: {status}")
        url = location
        status, location, page = session.request(url)
    if status == 200:  # the consent page: approve
        form = {**hidden_fields(page), "allow": "Authorize"}
        status, location, page = session.request(url, form)
    if status != 302:
        raise SystemExit(f"authorization did not redirect: {status}")
    session.request(location)  # the client's callback on localhost
    return session


def main() -> None:
    url = sys.argv[1]
    record: dict[str, Any] = {"url": url}
    try:
        session = authorize(url, os.environ["FAKE_BROWSER_USER"], os.environ["FAKE_BROWSER_PASSWORD"])
        record["visited"] = session.visited
    except BaseException as error:
        record["error"] = repr(error)
        raise
    finally:
        with open(os.environ["FAKE_BROWSER_LOG"], "a") as log:
            log.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
