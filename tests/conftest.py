"""Shared fixtures: example packages are built once per test session, from the project's files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import handler_package, scaled_packages
from tests.inprocess import InProcess, in_process
from tests.s3server import S3Server, s3_env

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
    example = {name.lower(): array for name, array in EVERY_DATATYPE.items()}
    return handler_package(tmp_path_factory.mktemp("echo"), "echo", ECHO_HANDLER, example=example)


@pytest.fixture(scope="session")
def served_packages(
    mlp_package: Path,
    digits_package: Path,
    minilm_package: Path,
    echo_package: Path,
    slow_package: Path,
) -> list[Path]:
    """What the shared servers serve: the example models, `echo` and `slow`."""
    return [mlp_package, digits_package, minilm_package, echo_package, slow_package]


@pytest.fixture(scope="session")
def served(
    tmp_path_factory: pytest.TempPathFactory, served_packages: list[Path]
) -> Iterator[InProcess]:
    """`served_packages` served in this process (see tests/inprocess.py), shared by the
    protocol tests: they change no model's versions."""
    with in_process(tmp_path_factory.mktemp("served") / "store", served_packages) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 API (moto's server) on loopback, for the object-store tests."""
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_url(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> str:
    """`s3://<a new bucket>/store` on the test server, with this process (and the servers
    it starts) pointed at it through the usual AWS variables."""
    for key, value in s3_env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = s3_server.bucket(f"t-{os.urandom(6).hex()}")
    return f"s3://{bucket}/store"


@pytest.fixture(scope="session")
def fifty_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Fifty small packages `s00` … `s49`: model i answers its input times i + 1 and holds
    4 MiB of weights of its own."""
    return scaled_packages(tmp_path_factory.mktemp("scaled"), 50, MODEL_FLOATS)


MODEL_FLOATS = 1 << 20
MODEL_BYTES = 4 * MODEL_FLOATS
