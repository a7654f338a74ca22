"""`torchport serve --backend ray`: each version a Ray Serve deployment on a real local Ray
(started by the server on 127.0.0.1, no dashboard, Ray's token authentication on),
torchport still the front end for every protocol and the management API."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc
from playwright.sync_api import Browser, expect

import torchport
from tests.e2e.browser import unlock
from tests.e2e.server import ServerProcess, check_mlp_under_concurrency, oip_body

X = np.random.default_rng(5).standard_normal((3, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def rserver(tmp_path_factory: pytest.TempPathFactory, mlp_package: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("ray") / "store", [mlp_package], TORCHPORT_BACKEND="ray"
    ).start(timeout=300)
    try:
        yield server
    finally:
        server.stop()


def workers(server: ServerProcess, version: int = 1) -> dict[str, Any]:
    shown = httpx.get(f"{server.management_url}/models/mlp", headers=server.auth, timeout=60)
    by_version = {v["version"]: v for v in shown.json()["versions"]}
    info: dict[str, Any] = by_version[version]["workers"]
    return info


def infer(server: ServerProcess, x: np.ndarray = X, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/mlp/infer", json=oip_body("input", x),
                      timeout=timeout)  # fmt: skip


def output(response: httpx.Response) -> np.ndarray:
    out = response.json()["outputs"][0]
    return np.array(out["data"], np.float32).reshape(out["shape"])


def test_a_version_runs_on_ray_replicas_and_answers_like_the_embedded_model(
    rserver: ServerProcess, mlp_package: Path
) -> None:
    info = workers(rserver)
    assert info["kind"] == "ray"
    assert info["count"] == 2
    assert len(info["pids"]) == 2  # two replica processes, neither the server
    assert rserver.proc is not None
    assert rserver.proc.pid not in info["pids"]
    with torchport.load(mlp_package) as model:
        want = model.predict({"input": X})["output"]
    np.testing.assert_allclose(output(infer(rserver)), want, atol=1e-5)
    with triton_grpc.InferenceServerClient(rserver.grpc_address) as client:
        tensor = triton_grpc.InferInput("input", [3, 32], "FP32")
        tensor.set_data_from_numpy(X)
        np.testing.assert_allclose(client.infer("mlp", [tensor]).as_numpy("output"), want,
                                   atol=1e-5)  # fmt: skip
    check_mlp_under_concurrency(rserver, mlp_package, seed=9, count=40, max_rows=4, threads=8)


def test_an_upload_deploys_on_ray_and_promote_and_rollback_switch_live(
    rserver: ServerProcess, tmp_path: Path
) -> None:
    torch.manual_seed(3)
    other = torch.nn.Sequential(torch.nn.Linear(32, 8)).eval()
    package = tmp_path / "mlp2.tpa"
    torchport.package(other, name="mlp", example={"input": X[:1]}, out=package)
    with torch.no_grad():
        want = other(torch.from_numpy(X)).numpy()
    before = output(infer(rserver))
    r = httpx.post(f"{rserver.management_url}/models/mlp?promote=true",
                   content=package.read_bytes(), headers=rserver.auth, timeout=300)  # fmt: skip
    assert r.status_code == 201, r.text
    assert workers(rserver, 2)["kind"] == "ray"
    np.testing.assert_allclose(output(infer(rserver)), want, atol=1e-5)
    back = httpx.post(f"{rserver.management_url}/models/mlp/rollback", headers=rserver.auth,
                      timeout=300)  # fmt: skip
    assert back.status_code == 200
    np.testing.assert_allclose(output(infer(rserver)), before, atol=1e-6)


def test_a_killed_replica_fails_cleanly_and_comes_back(rserver: ServerProcess) -> None:
    [victim, _] = workers(rserver)["pids"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        load = [pool.submit(infer, rserver, X, 120) for _ in range(40)]
        time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
        statuses = [f.result().status_code for f in load]  # none hangs: each is answered
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1
    deadline = time.monotonic() + 180
    while True:  # Ray Serve replaces the replica; requests succeed meanwhile or after
        info = workers(rserver)
        if len(info["pids"]) == 2 and victim not in info["pids"]:
            break
        assert time.monotonic() < deadline, f"the replica did not come back: {info}"
        time.sleep(1)
    assert all(infer(rserver).status_code == 200 for _ in range(5))


def configure(server: ServerProcess, **config: Any) -> None:
    r = httpx.put(f"{server.management_url}/models/mlp/versions/1/config",
                  json=config, headers=server.auth, timeout=300)  # fmt: skip
    assert r.status_code == 200, r.text


def wait_for(server: ServerProcess, replicas: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while (info := workers(server))["count"] != replicas:
        assert time.monotonic() < deadline, f"never {replicas} replica(s): {info}"
        time.sleep(0.5)


def test_a_new_replica_count_redeploys_beside_the_old_then_swaps(rserver: ServerProcess) -> None:
    before = output(infer(rserver))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        during = [pool.submit(infer, rserver, X, 120) for _ in range(20)]
        configure(rserver, workers=1)
        assert [f.result().status_code for f in during] == [200] * 20  # none lost in the swap
    info = workers(rserver)
    assert (info["count"], len(info["pids"])) == (1, 1)
    np.testing.assert_allclose(output(infer(rserver)), before, atol=1e-6)
    configure(rserver, workers=2)
    assert len(workers(rserver)["pids"]) == 2


def test_replicas_autoscale_with_load_within_the_configured_range(
    rserver: ServerProcess, browser: Browser
) -> None:
    configure(rserver, workers=1, max_workers=2, scale_up_delay_s=0, scale_down_delay_s=2)
    info = workers(rserver)
    assert (info["count"], info["min"], info["max"]) == (1, 1, 2)
    page = browser.new_page()
    page.goto(f"{rserver.management_url}/dashboard")
    unlock(page)
    page.click("#models li[data-model=mlp]")
    expect(page.locator("#versions tbody")).to_contain_text(
        "1 \u00d7 ray (1\u20132)"  # the live count, the kind and the range
    )
    page.close()
    stop = threading.Event()

    def load() -> list[int]:
        statuses = []
        while not stop.is_set():
            statuses.append(infer(rserver).status_code)
        return statuses

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        clients = [pool.submit(load) for _ in range(8)]
        try:
            wait_for(rserver, 2)  # batches queue for the one replica: Ray adds one
        finally:
            stop.set()
        statuses = [s for c in clients for s in c.result()]
    assert set(statuses) == {200}, statuses  # scaling up lost no request
    wait_for(rserver, 1)  # idle: back to the minimum
    assert infer(rserver).status_code == 200
    configure(rserver, workers=2, max_workers=None)
    assert workers(rserver)["count"] == 2
