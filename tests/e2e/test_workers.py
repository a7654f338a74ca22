"""Worker processes: same answers as in-process, and a killed worker is replaced."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import torchport
from tests.e2e.server import ServerProcess


@pytest.fixture(scope="module")
def wserver(
    tmp_path_factory: pytest.TempPathFactory, mlp_package: Path, slow_package: Path
) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("workers") / "store"
    proc = ServerProcess(store, [mlp_package, slow_package]).start()
    yield proc
    proc.stop()


def configure(server: ServerProcess, model: str, **config: Any) -> dict[str, Any]:
    response = httpx.put(
        f"{server.management_url}/models/{model}/versions/1/config",
        json=config,
        headers=server.auth,
        timeout=300,
    )
    assert response.status_code == 200, response.text
    shown = httpx.get(f"{server.management_url}/models/{model}", headers=server.auth).json()
    workers: dict[str, Any] = shown["versions"][0]["workers"]
    return workers


def oip(name: str, x: np.ndarray) -> dict[str, Any]:
    data = x.reshape(-1).tolist()
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": data}]}


def test_process_workers_answer_like_the_embedded_model(
    wserver: ServerProcess, mlp_package: Path
) -> None:
    workers = configure(wserver, "mlp", worker_kind="process", workers=2)
    assert workers["kind"] == "process"
    assert len(workers["pids"]) == 2
    assert os.getpid() not in workers["pids"]
    rng = np.random.default_rng(3)
    requests = [
        rng.standard_normal((int(rng.integers(1, 5)), 32)).astype(np.float32) for _ in range(40)
    ]
    with torchport.load(mlp_package) as m:
        want = [m.predict({"input": x})["output"] for x in requests]

    def send(x: np.ndarray) -> np.ndarray:
        response = httpx.post(
            f"{wserver.url}/v2/models/mlp/infer", json=oip("input", x), timeout=60
        )
        assert response.status_code == 200, response.text
        out = response.json()["outputs"][0]
        return np.array(out["data"], np.float32).reshape(out["shape"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(send, requests))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    back = configure(wserver, "mlp", worker_kind="thread", workers=1)
    assert back == {"kind": "thread", "count": 1, "pids": []}


def test_a_killed_worker_fails_its_batch_with_503_and_is_replaced(wserver: ServerProcess) -> None:
    workers = configure(wserver, "slow", worker_kind="process", workers=1, max_batch_size=1)
    [pid] = workers["pids"]
    x = np.ones((1, 4), np.float32)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(
            httpx.post, f"{wserver.url}/v2/models/slow/infer", json=oip("x", x), timeout=60
        )
        time.sleep(0.1)  # the worker is inside its 0.2 s batch
        os.kill(pid, signal.SIGKILL)
        failed = in_flight.result()
    assert failed.status_code == 503
    assert "worker process" in failed.json()["error"]
    deadline = time.monotonic() + 120
    while True:
        response = httpx.post(f"{wserver.url}/v2/models/slow/infer", json=oip("x", x), timeout=60)
        if response.status_code == 200:
            break
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.2)
    assert response.json()["outputs"][0]["data"] == [2.0] * 4
    shown = httpx.get(f"{wserver.management_url}/models/slow", headers=wserver.auth).json()
    [new_pid] = shown["versions"][0]["workers"]["pids"]
    assert new_pid != pid
