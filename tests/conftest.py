"""Shared fixtures: example packages are built once per test session, from the project's files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "src" / "torchport" / "examples"


@pytest.fixture(scope="session")
def examples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("examples")


def _build(name: str, out_dir: Path) -> Path:
    from torchport.examples import build_examples

    path = out_dir / f"{name}.tpa"
    if not path.exists():
        build_examples(out_dir, (name,))
    return path


@pytest.fixture(scope="session")
def mlp_package(examples_dir: Path) -> Path:
    return _build("mlp", examples_dir)


@pytest.fixture(scope="session")
def digits_package(examples_dir: Path) -> Path:
    return _build("digits", examples_dir)


@pytest.fixture(scope="session")
def minilm_package(examples_dir: Path) -> Path:
    return _build("minilm", examples_dir)


@pytest.fixture
def mlp_input() -> np.ndarray:
    return np.random.default_rng(42).standard_normal((3, 32)).astype(np.float32)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


SLOW_MODEL = """
import time

import torch


class Slow(torch.nn.Module):
    # Doubles its input after a pause: a stand-in for a heavy model, to fill queues.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.2)
        return x * 2


def build() -> torch.nn.Module:
    return Slow()
"""


@pytest.fixture(scope="session")
def slow_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torchport

    work = tmp_path_factory.mktemp("slow")
    (work / "model.py").write_text(SLOW_MODEL)
    out = work / "slow.tpa"
    torchport.package(
        name="slow",
        code=f"{work / 'model.py'}:build",
        example={"x": np.ones((1, 4), np.float32)},
        signature={
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, -1]}],
        },
        runtime={"max_batch_size": 64, "max_queue": 4, "max_batch_delay_ms": 1},
        out=out,
    )
    return out
