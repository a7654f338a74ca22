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
