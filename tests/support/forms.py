"""Read an HTML form the way a browser submits it (for admin change forms in tests)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlencode

import httpx


class _FormReader(HTMLParser):
    def __init__(self, form_id: str | None) -> None:
        super().__init__(convert_charrefs=True)
        self.form_id = form_id
        self.inside = False
        self.fields: list[tuple[str, str]] = []
        self._select: str | None = None
        self._select_value: str | None = None
        self._textarea: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and (self.form_id is None or a.get("id") == self.form_id):
            self.inside = True
        if not self.inside:
            return
        name = a.get("name")
        if tag == "input" and name:
            kind = a.get("type", "text").lower()
            if kind in {"submit", "button", "image", "reset", "file"}:
                return
            if kind in {"checkbox", "radio"} and "checked" not in a:
                return
            self.fields.append((name, a.get("value", "on" if kind == "checkbox" else "")))
        elif tag == "select" and name:
            self._select, self._select_value = name, None
        elif tag == "option" and self._select is not None and "selected" in a:
            self._select_value = a.get("value", "")
        elif tag == "textarea" and name:
            self._textarea, self._text = name, []

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "select" and self._select is not None:
            if self._select_value is not None:
                self.fields.append((self._select, self._select_value))
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            self.fields.append((self._textarea, "".join(self._text).lstrip("\n")))
            self._textarea = None
        elif tag == "form" and self.inside:
            self.inside = False


def form_fields(html: str, form_id: str | None = None) -> list[tuple[str, str]]:
    """The (name, value) pairs a browser would submit for the form (the first, or `form_id`)."""
    reader = _FormReader(form_id)
    reader.feed(html)
    return reader.fields


def admin_set_user_permissions(http: httpx.Client, username: str, permission_ids: list[int]) -> None:
    """Save a user's admin change form with exactly these permissions, as an operator does
    (`http`: an operator's logged-in browser)."""
    listing = http.get("/admin/auth/user/", params={"q": username})
    assert listing.status_code == 200, listing.text
    # The search matches other users too (bobby, an email with bob in it): take the row whose
    # link text is exactly this username.
    link = rf'href="(/admin/auth/user/\d+/change/)[^"]*">{re.escape(username)}</a>'
    (path,) = set(re.findall(link, listing.text))
    page = http.get(path)
    assert page.status_code == 200, page.text
    fields = [
        (name, value) for name, value in form_fields(page.text, "user_form") if name != "user_permissions"
    ]
    fields += [("user_permissions", str(pk)) for pk in permission_ids]
    saved = http.post(
        path, content=urlencode(fields), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert saved.status_code == 302, saved.text
