"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against a real
server. Screenshots go to build/test-artifacts/dashboard/."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    expect,
)

import torchport
from tests.e2e.browser import unlock
from tests.e2e.server import ServerProcess, oip_body, running

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "dashboard"
VENDOR = Path(torchport.__file__).parent / "dashboard" / "static" / "vendor"


@pytest.fixture(scope="module")
def dserver(
    tmp_path_factory: pytest.TempPathFactory,
    mlp_package: Path,
    digits_package: Path,
    minilm_package: Path,
) -> Iterator[ServerProcess]:
    with running(tmp_path_factory, "dashboard", [mlp_package, digits_package, minilm_package]) as s:
        yield s


class Watched:
    """A page, and what went wrong in it: console errors, script errors, foreign requests."""

    def __init__(self, page: Page, origin: str) -> None:
        self.page = page
        self.errors: list[str] = []
        self.foreign: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on(
            "request",
            lambda r: None if r.url.startswith((origin, "data:")) else self.foreign.append(r.url),
        )

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")


@pytest.fixture
def watched(browser: Browser, dserver: ServerProcess) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    watched = Watched(page, dserver.management_url)
    page.goto(f"{dserver.management_url}/dashboard")
    yield watched
    context.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def infer_mlp(server: ServerProcess, count: int, version: int | None = None) -> None:
    path = f"/v2/models/mlp/versions/{version}/infer" if version else "/v2/models/mlp/infer"
    x = np.random.default_rng(count).standard_normal((1, 32)).astype(np.float32)
    with httpx.Client(base_url=server.url) as client:
        for _ in range(count):
            assert client.post(path, json=oip_body("input", x)).status_code == 200


def promote_button(page: Page, version: int) -> Locator:
    """Unlock the page, open `mlp`, and find the Promote button of `version`."""
    unlock(page)
    page.click("#models li[data-model=mlp]")
    button = page.locator(f"#versions tr[data-version='{version}'] button.promote")
    expect(button).to_be_visible()
    return button


def default_of(server: ServerProcess, model: str) -> int:
    r = httpx.get(f"{server.management_url}/models/{model}", headers=server.auth)
    return int(r.json()["default"])


@pytest.fixture(scope="module")
def mlp_v2(dserver: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> int:
    """A second `mlp` version (different weights), uploaded but not promoted."""
    torch.manual_seed(11)
    other = torch.nn.Sequential(torch.nn.Linear(32, 8)).eval()
    package = tmp_path_factory.mktemp("mlp-v2") / "mlp.tpa"
    torchport.package(
        other, name="mlp", example={"input": np.zeros((1, 32), np.float32)}, out=package
    )
    r = httpx.post(
        f"{dserver.management_url}/models/mlp",
        content=package.read_bytes(),
        headers=dserver.auth,
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


def test_the_page_asks_for_the_token_and_shows_nothing_without_it(watched: Watched) -> None:
    page = watched.page
    expect(page.locator("#locked")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    page.fill("#token", "not-the-token")
    page.click("#token-form button")
    expect(page.locator("#token-error")).to_contain_text("token was refused")
    expect(page.locator("#app")).to_be_hidden()
    expect(page.locator("#models li")).to_have_count(0)
    shot(page, "locked")
    # The one error the browser logs is the refused request itself.
    assert all("401" in e for e in watched.errors), watched.errors


def test_the_page_lists_the_example_models_with_no_console_errors(
    watched: Watched, dserver: ServerProcess
) -> None:
    page = watched.page
    unlock(page)
    models = page.locator("#models li")
    expect(models).to_have_count(3)
    assert sorted(models.evaluate_all("items => items.map(i => i.dataset.model)")) == [
        "digits",
        "minilm",
        "mlp",
    ]
    page.click("#models li[data-model=digits]")
    expect(page.locator("#model-name")).to_have_text("digits")
    expect(page.locator("#versions tbody tr")).to_have_count(1)
    expect(page.locator("#versions tbody tr td").nth(1)).to_have_text("READY")
    expect(page.locator("#versions tbody tr td").nth(2)).to_contain_text("thread")
    # What the loaded version holds in memory, and when it was last used.
    expect(page.locator("#versions tbody tr td.resident")).to_contain_text("KiB")
    expect(page.locator("#audit tbody tr").first).to_contain_text("upload")
    expect(page.locator("#charts .chart")).to_have_count(5)
    expect(page.locator("#status")).to_contain_text("live")
    # The GPUs' panel lists what /models reports (nothing, and no heading, without one).
    listed = httpx.get(f"{dserver.management_url}/models", headers=dserver.auth).json()
    expect(page.locator("#devices li")).to_have_count(len(listed["devices"]))
    title = page.locator("#devices-title")
    if listed["devices"]:
        expect(title).to_be_visible()
    else:
        expect(title).to_be_hidden()
    assert watched.errors == []
    assert watched.foreign == []  # no CDN, no fonts, nothing off this server


def test_a_chart_follows_the_traffic(watched: Watched, dserver: ServerProcess) -> None:
    page = watched.page
    unlock(page)
    page.click("#models li[data-model=mlp]")
    expect(page.locator("#model-name")).to_have_text("mlp")
    now = page.locator('[data-chart=rps] .now [data-version="1"]')
    expect(now).to_be_visible()
    before = page.evaluate("state.charts.rps.data[0].length")
    infer_mlp(dserver, 60)
    # The point of the interval with the traffic in it arrives within a few refreshes.
    expect(now).not_to_have_text(re.compile(r"v1: 0\.0/s"), timeout=15_000)
    page.wait_for_function(
        "() => state.charts.rps.data[1].some(v => v > 0)"
        " && state.charts.batch.data[1].some(v => v >= 1)",
        timeout=15_000,
    )
    assert page.evaluate("state.charts.rps.data[0].length") > before
    shot(page, "live")
    assert watched.errors == []


def test_promote_and_rollback_from_the_page(
    watched: Watched, dserver: ServerProcess, mlp_v2: int
) -> None:
    page = watched.page
    promote = promote_button(page, mlp_v2)

    promote.click()  # asks first; Cancel changes nothing
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text(f"version {mlp_v2} the default of mlp")
    page.click("#confirm button[value=cancel]")
    assert default_of(dserver, "mlp") == 1

    promote.click()
    page.click("#confirm-ok")
    expect(page.locator("#toast")).to_contain_text(f"version {mlp_v2} is now the default")
    assert default_of(dserver, "mlp") == mlp_v2
    expect(page.locator("#model-default")).to_have_text(f"default: v{mlp_v2}")
    expect(page.locator("#audit tbody tr").first).to_contain_text("promote")
    shot(page, "promoted")

    page.click("#rollback")
    page.click("#confirm-ok")
    expect(page.locator("#toast")).to_contain_text("rolled back, version 1 is the default")
    assert default_of(dserver, "mlp") == 1
    assert watched.errors == []


def test_actions_are_refused_without_the_right_token(
    watched: Watched, dserver: ServerProcess, mlp_v2: int
) -> None:
    page = watched.page
    promote = promote_button(page, mlp_v2)
    # The token is changed under the page (say, the server restarted with another one).
    page.evaluate("sessionStorage.setItem('torchport-token', 'a-stale-token')")
    promote.click()
    page.click("#confirm-ok")
    expect(page.locator("#toast [role=alert]")).to_contain_text("Promote refused")
    expect(page.locator("#locked")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    assert default_of(dserver, "mlp") == 1
    # With no token at all, the page sends nothing: the API call fails before any request.
    message = page.evaluate(
        "api('/models/mlp/rollback', {method: 'POST'}).then(() => 'sent', e => e.message)"
    )
    assert "no management token" in message
    assert default_of(dserver, "mlp") == 1


def test_two_versions_compared_on_the_page(
    watched: Watched, dserver: ServerProcess, mlp_v2: int
) -> None:
    infer_mlp(dserver, 5)
    infer_mlp(dserver, 5, version=mlp_v2)
    page = watched.page
    unlock(page)
    page.click("#models li[data-model=mlp]")
    expect(page.locator("#compare-a")).to_have_value("1")
    expect(page.locator("#compare-b")).to_have_value(str(mlp_v2))
    page.click("#compare-form button")
    rows = page.locator("#compare-outputs tbody tr")
    expect(rows).to_have_count(1)
    cells = rows.first.locator("td")
    expect(cells.nth(0)).to_have_text("output")
    assert float(cells.nth(1).inner_text()) > 0.01  # different weights, different answers
    expect(page.locator("#compare-latency tbody tr")).to_have_count(2)
    shot(page, "compare")
    assert watched.errors == []


def test_the_page_is_same_origin_and_its_files_are_the_vendored_ones(
    dserver: ServerProcess,
) -> None:
    page = httpx.get(f"{dserver.management_url}/dashboard")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # nothing from a CDN
    sums = (VENDOR / "SHA256SUMS").read_text().splitlines()
    files = [line.split() for line in sums if not line.startswith("#")]
    assert {name for _, name in files} >= {"uPlot.iife.min.js", "uPlot.min.css"}
    for digest, name in files:
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
        if not name.endswith("LICENSE"):
            served = httpx.get(f"{dserver.management_url}/dashboard/vendor/{name}")
            assert served.content == (VENDOR / name).read_bytes()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/dashboard/../token", 401),  # out of the page's files: the API, token needed
        ("/dashboard/nope.js", 404),
        ("/dashboard/__init__.py", 404),
        ("/stats", 401),
        ("/models/mlp/stats", 401),
    ],
)
def test_only_the_page_itself_is_served_without_the_token(
    dserver: ServerProcess, path: str, status: int
) -> None:
    r = httpx.get(f"{dserver.management_url}{path}")
    assert r.status_code == status
    assert "error" in r.json()


def test_the_inference_port_serves_no_management_view(dserver: ServerProcess) -> None:
    assert httpx.get(f"{dserver.url}/dashboard").status_code == 404
    stats = httpx.get(f"{dserver.management_url}/models/nope/stats", headers=dserver.auth)
    assert stats.status_code == 404
    assert stats.json()["field"] == "model"


def test_a_rollout_and_its_decision_on_the_page(
    watched: Watched, dserver: ServerProcess, mlp_v2: int
) -> None:
    started = httpx.post(
        f"{dserver.management_url}/models/mlp/rollout",
        json={"candidate": mlp_v2, "mode": "shadow", "share": 1.0, "rules": None},
        headers=dserver.auth,
    )
    assert started.status_code == 201, started.text
    infer_mlp(dserver, 20)
    page = watched.page
    unlock(page)
    page.click("#models li[data-model=mlp]")
    expect(page.locator("#rollout-state")).to_have_text("running")
    expect(page.locator("#rollout-summary")).to_contain_text(f"shadow of v{mlp_v2} against v1")
    expect(page.locator("#rollout-versions tbody tr")).to_have_count(2)
    expect(page.locator("#rollout-outputs tbody tr")).to_have_count(1)
    shot(page, "rollout")
    page.click("#rollout button[data-action=stop]")
    page.click("#confirm-ok")
    expect(page.locator("#rollout-state")).to_have_text("stopped")
    expect(page.locator("#rollout-decision")).to_contain_text("Decided by")
    assert default_of(dserver, "mlp") == 1
    assert watched.errors == []


def test_recorded_traffic_replayed_from_the_page(
    watched: Watched, dserver: ServerProcess, mlp_v2: int
) -> None:
    recording = f"{dserver.management_url}/models/mlp/recording"
    assert httpx.put(recording, json={"share": 1}, headers=dserver.auth).status_code == 200
    infer_mlp(dserver, 30)
    deadline = time.monotonic() + 20
    while httpx.get(recording, headers=dserver.auth).json()["recorded"] < 30:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    httpx.delete(recording, headers=dserver.auth)
    page = watched.page
    unlock(page)
    page.click("#models li[data-model=mlp]")
    page.select_option("#replay-version", str(mlp_v2))
    page.click("#replay-form button")
    expect(page.locator("#replay-summary")).to_contain_text(f"v{mlp_v2}: ")
    expect(page.locator("#replay-outputs tbody tr")).to_have_count(1)
    shot(page, "replay")
    assert watched.errors == []
