"""Comparing two versions of a model on its recent traffic: outputs and latency."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import torchport
from tests.e2e.server import oip_body
from tests.inprocess import InProcess, in_process


@pytest.fixture(scope="module")
def cserver(tmp_path_factory: pytest.TempPathFactory, mlp_package: Path) -> Iterator[InProcess]:
    with in_process(tmp_path_factory.mktemp("compare") / "store", [mlp_package]) as served:
        yield served


def test_two_versions_are_compared_on_the_recent_requests(
    cserver: InProcess, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = rng.standard_normal((2, 32)).astype(np.float32)
        r = cserver.http.post("/v2/models/mlp/infer", json=oip_body("input", x))
        assert r.status_code == 200
    compare = "/models/mlp/compare"
    same = cserver.admin.get(compare, params={"a": 1, "b": 1}, headers=cserver.auth).json()
    assert same["samples"] == 5
    assert same["outputs"]["output"]["max_abs_diff"] == 0
    assert set(same["latency_ms"]) == {"1"}

    torch.manual_seed(7)
    other = torch.nn.Sequential(torch.nn.Linear(32, 8)).eval()
    package = tmp_path / "mlp2.tpa"
    torchport.package(
        other, name="mlp", example={"input": np.zeros((1, 32), np.float32)}, out=package
    )
    uploaded = cserver.admin.post("/models/mlp", content=package.read_bytes(), headers=cserver.auth)
    assert uploaded.status_code == 201
    assert uploaded.json()["version"] == 2
    report = cserver.admin.get(compare, params={"a": 1, "b": 2}, headers=cserver.auth).json()
    assert (report["a"], report["b"], report["samples"]) == (1, 2, 5)
    assert report["outputs"]["output"]["max_abs_diff"] > 0.01
    assert report["outputs"]["output"]["rows_differing"] == 10
    assert set(report["latency_ms"]) == {"1", "2"}


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/models/mlp/compare", {"a": "x", "b": "1"}, 400),
        ("/models/mlp/compare", {"a": "1"}, 400),
        ("/models/nope/compare", {"a": "1", "b": "1"}, 404),
        ("/models/mlp/compare", {"a": "1", "b": "9"}, 404),
    ],
)
def test_bad_comparisons_are_refused_clearly(
    cserver: InProcess, path: str, params: dict[str, str], status: int
) -> None:
    cserver.http.post("/v2/models/mlp/infer", json=oip_body("input", np.zeros((1, 32), np.float32)))
    response = cserver.admin.get(f"{path}", params=params, headers=cserver.auth)
    assert response.status_code == status, response.text
    assert response.json()["code"] in ("invalid_input", "not_found")


def test_comparing_needs_the_token(cserver: InProcess) -> None:
    response = cserver.admin.get("/models/mlp/compare", params={"a": 1, "b": 1})
    assert response.status_code == 401
