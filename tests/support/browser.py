"""A real browser for the page tests: Debian's Chromium driven by Playwright for Python.

Chromium is Debian's package (`/usr/bin/chromium`, installed with apt-get when we are root and
it is missing; see tests/support/debian.py), never a browser Playwright downloads. Each page
gets a fresh profile (user-data dir) and the flags that keep Chromium off the network: this
machine has none, and Chromium's background connections would only be refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, Playwright, ViewportSize

from tests.support.debian import require_debian_program
from tests.support.live import ROOT

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A phone is a 375 px wide window, not mobile emulation: emulated mobile Chromium zooms out
# to fit content that overflows, which would hide exactly the horizontal scroll we look for.
VIEWPORTS: dict[str, ViewportSize] = {
    "desktop": {"width": 1280, "height": 800},
    "phone": {"width": 375, "height": 812},
}


def require_chromium() -> str:
    return require_debian_program("chromium", package="chromium")


@contextmanager
def chromium_page(playwright: Playwright, *, viewport: str, profile: Path) -> Iterator[Page]:
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=require_chromium(),
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport=VIEWPORTS[viewport],
    )
    context.set_default_timeout(20_000)
    try:
        yield context.pages[0] if context.pages else context.new_page()
    finally:
        context.close()


def assert_no_horizontal_scroll(page: Page, what: str) -> None:
    scroll_width, inner_width = page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert scroll_width <= inner_width, f"{what}: {scroll_width} px wide in a {inner_width} px window"


def text_lines(page: Page, selector: str) -> int:
    """How many lines the text of the element at `selector` is laid out on."""
    return page.eval_on_selector(
        selector,
        """el => { const range = document.createRange(); range.selectNodeContents(el);
                   return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size; }""",
    )


def screenshot(page: Page, name: str, viewport: str) -> Path:
    """A full-page screenshot kept as a test artifact (test-artifacts/screenshots/, git-ignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9-]+', '-', name.lower())}-{viewport}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
