"""Fixtures that start real servers (one shared by the tests that need the wire; others
start their own), and the browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.server import ServerProcess


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, served_packages: list[Path]
) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("served") / "store"
    proc = ServerProcess(store, served_packages, TORCHPORT_MAX_REQUEST_BYTES=str(4 * 1024 * 1024))
    yield proc.start()
    proc.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (make test does)")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield browser
    browser.close()
