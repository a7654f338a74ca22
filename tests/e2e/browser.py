"""A real browser for the dashboard tests: Debian's Chromium, driven by Playwright."""

from __future__ import annotations

import os
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.e2e.server import TOKEN

CHROMIUM = Path(os.environ.get("TORCHPORT_CHROMIUM", "/usr/bin/chromium"))
# As a locked-down machine needs it: no sandbox (root in CI), no calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def unlock(page: Page) -> None:
    """Give the dashboard the management token, as a user pastes it."""
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    expect(page.locator("#app")).to_be_visible()
