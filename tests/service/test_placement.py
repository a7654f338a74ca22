"""A version's device and precision set through its config: checked before they are
stored, then applied to the live version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import torchport
from tests.e2e.server import value
from tests.inprocess import InProcess, in_process

LARGE = """
import torch


class Large(torch.nn.Module):
    # Answers past float16's range (65,504): fine in fp32 and bf16, infinite in fp16.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1e5


def build() -> torch.nn.Module:
    return Large()
"""


@pytest.fixture
def served(tmp_path: Path, mlp_package: Path) -> InProcess:
    (tmp_path / "large.py").write_text(LARGE)
    large = tmp_path / "large.tpa"
    torchport.package(
        name="large",
        code=f"{tmp_path / 'large.py'}:build",
        example={"x": np.full((1, 2), 3.0, np.float32)},
        out=large,
    )
    with in_process(tmp_path / "store", [mlp_package, large]) as server:
        yield server


def config(server: InProcess, model: str, body: dict[str, object]) -> tuple[int, dict[str, str]]:
    answer = server.admin.put(f"/models/{model}/versions/1/config", json=body, headers=server.auth)
    return answer.status_code, answer.json()


def test_a_precision_that_reproduces_the_example_is_applied_live(served: InProcess) -> None:
    status, _ = config(served, "mlp", {"precision": "bf16"})
    assert status == 200
    loaded = served.registry.acquire_loaded("mlp", 1)
    assert loaded is not None
    served.registry.release(loaded)
    assert loaded.runner.precision == "bf16"  # type: ignore[attr-defined]
    answer = served.http.post(
        "/v2/models/mlp/infer",
        json={
            "inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}]
        },
    )
    assert answer.status_code == 200
    assert answer.json()["outputs"][0]["datatype"] == "FP32"
    placed = value(
        served.scrape(), "torchport_version_info", model="mlp", version="1", device="cpu",
        precision="bf16",
    )  # fmt: skip
    assert placed == 1
    shown = served.admin.get("/models/mlp", headers=served.auth).json()
    assert shown["versions"][0]["resident"]["precision"] == "bf16"
    assert shown["versions"][0]["workers"]["precision"] == "bf16"


def test_a_precision_the_model_does_not_survive_is_refused(served: InProcess) -> None:
    status, body = config(served, "large", {"precision": "fp16"})
    assert status == 400
    assert body["field"] == "precision"
    assert "large v1 in fp16 does not reproduce its example" in body["error"]
    assert served.store.get_version("large", 1).config == {}  # nothing stored
    assert config(served, "large", {"precision": "bf16"})[0] == 200


def test_a_device_this_machine_lacks_is_refused_before_it_is_stored(served: InProcess) -> None:
    status, body = config(served, "mlp", {"device": "cuda:3"})
    assert status == 400
    assert body["field"] == "device"
    assert "cuda:3 is not available" in body["error"]
    assert served.store.get_version("mlp", 1).config == {}
    status, body = config(served, "mlp", {"device": "tpu"})
    assert status == 400
    assert "device" in body["error"]


def test_a_batch_size_left_open_is_the_devices_default(served: InProcess) -> None:
    from torchport.archive import RuntimeDefaults

    # `large` was packaged without a batch size: on this CPU it batches 8 rows at most.
    loaded = served.registry.acquire_loaded("large", 1)
    assert loaded is not None
    served.registry.release(loaded)
    assert loaded.runner.manifest.runtime.max_batch_size is None
    assert loaded.batcher.policy.max_batch_size == 8
    # mlp's package says 32, which holds on any device; a config says more.
    mlp = served.registry.acquire_loaded("mlp", 1)
    assert mlp is not None
    served.registry.release(mlp)
    assert mlp.batcher.policy.max_batch_size == 32
    assert config(served, "large", {"max_batch_size": 3})[0] == 200
    large = served.registry.acquire_loaded("large", 1)
    assert large is not None
    served.registry.release(large)
    assert large.batcher.policy.max_batch_size == 3
    # On a GPU, the same open setting means 64 rows (what a version placed there gets).
    assert RuntimeDefaults().batch_size_on("cuda:0") == 64
    assert RuntimeDefaults().batch_size_on("cpu") == 8
    assert RuntimeDefaults(max_batch_size=4).batch_size_on("cuda:1") == 4
