"""Fixtures that start real servers; each test module gets its own store and ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

import torchport
from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.server import ServerProcess

ECHO_MODEL = """
import torch

def build() -> torch.nn.Module:
    return torch.nn.Identity()
"""

ECHO_HANDLER = """
from torchport.runtime import Handler as Base

class Handler(Base):
    # Returns its inputs unchanged: exercises the wire format of every datatype.
    def preprocess(self, inputs):
        return inputs

    def inference(self, inputs):
        return inputs

    def postprocess(self, outputs):
        return dict(outputs)
"""

EVERY_DATATYPE = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 1, 255]], np.uint8),
    "UINT16": np.array([[0, 1, 65535]], np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1]], np.uint64),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], np.int64),
    "FP16": np.array([[0.5, -1.0, 65504.0]], np.float16),
    "FP32": np.array([[1.5, -2.25, 3.4e38]], np.float32),
    "FP64": np.array([[1e-300, -0.1, 1.7e308]], np.float64),
    "BYTES": np.array([[b"plain", "ünïcödé".encode(), "🚀".encode()]], dtype=object),
}


@pytest.fixture(scope="session")
def echo_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("echo")
    (work / "model.py").write_text(ECHO_MODEL)
    (work / "handler.py").write_text(ECHO_HANDLER)
    example = {name.lower(): array for name, array in EVERY_DATATYPE.items()}
    out = work / "echo.tpa"
    torchport.package(
        name="echo",
        code=f"{work / 'model.py'}:build",
        handler=work / "handler.py",
        example=example,
        out=out,
    )
    return out


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    mlp_package: Path,
    digits_package: Path,
    minilm_package: Path,
    echo_package: Path,
    slow_package: Path,
) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("served") / "store"
    packages = [mlp_package, digits_package, minilm_package, echo_package, slow_package]
    proc = ServerProcess(store, packages, TORCHPORT_MAX_REQUEST_BYTES=str(4 * 1024 * 1024)).start()
    yield proc
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
