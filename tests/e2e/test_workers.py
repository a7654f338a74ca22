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

from tests.e2e.server import (
    ServerProcess,
    check_mlp_under_concurrency,
    oip_body,
    running,
    scrape,
    value,
)


@pytest.fixture(scope="module")
def wserver(
    tmp_path_factory: pytest.TempPathFactory, mlp_package: Path, slow_package: Path
) -> Iterator[ServerProcess]:
    with running(tmp_path_factory, "workers", [mlp_package, slow_package]) as proc:
        yield proc


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


def test_process_workers_answer_like_the_embedded_model(
    wserver: ServerProcess, mlp_package: Path
) -> None:
    workers = configure(wserver, "mlp", worker_kind="process", workers=2)
    assert workers["kind"] == "process"
    assert len(workers["pids"]) == 2
    assert os.getpid() not in workers["pids"]
    before = scrape(wserver)
    check_mlp_under_concurrency(wserver, mlp_package, seed=3, count=40, max_rows=4, threads=8)
    after = scrape(wserver)
    # Batches run in the worker processes are counted by the server, once each.
    mlp = {"model": "mlp", "version": "1"}
    ok = {**mlp, "protocol": "oip_rest", "outcome": "ok"}
    assert (
        value(after, "torchport_requests_total", **ok)
        - value(before, "torchport_requests_total", **ok)
        == 40
    )
    assert (
        value(after, "torchport_queue_wait_seconds_count", **mlp)
        - value(before, "torchport_queue_wait_seconds_count", **mlp)
        == 40
    )
    assert value(after, "torchport_workers", **mlp, kind="process") == 2
    back = configure(wserver, "mlp", worker_kind="thread", workers=1)
    assert back == {"kind": "thread", "count": 1, "pids": [], "compiled": False,
                    "device": "cpu", "precision": "fp32"}  # fmt: skip


def test_a_version_compiled_at_load_answers_like_the_embedded_model(
    wserver: ServerProcess, mlp_package: Path
) -> None:
    workers = configure(wserver, "mlp", compile=True)  # reloads it, compiled, then swaps
    assert workers["compiled"] is True
    check_mlp_under_concurrency(wserver, mlp_package, seed=5, count=40, max_rows=4, threads=8)
    assert configure(wserver, "mlp", compile=False)["compiled"] is False


def test_a_killed_worker_fails_its_batch_with_503_and_is_replaced(wserver: ServerProcess) -> None:
    workers = configure(wserver, "slow", worker_kind="process", workers=1, max_batch_size=1)
    [pid] = workers["pids"]
    x = np.ones((1, 4), np.float32)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(
            httpx.post, f"{wserver.url}/v2/models/slow/infer", json=oip_body("x", x), timeout=60
        )
        time.sleep(0.1)  # the worker is inside its 0.2 s batch
        os.kill(pid, signal.SIGKILL)
        failed = in_flight.result()
    assert failed.status_code == 503
    assert "worker process" in failed.json()["error"]
    deadline = time.monotonic() + 120
    while True:
        response = httpx.post(
            f"{wserver.url}/v2/models/slow/infer", json=oip_body("x", x), timeout=60
        )
        if response.status_code == 200:
            break
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.2)
    assert response.json()["outputs"][0]["data"] == [2.0] * 4
    shown = httpx.get(f"{wserver.management_url}/models/slow", headers=wserver.auth).json()
    [new_pid] = shown["versions"][0]["workers"]["pids"]
    assert new_pid != pid
    metrics = scrape(wserver)
    slow = {"model": "slow", "version": "1"}
    assert value(metrics, "torchport_worker_restarts_total", **slow) == 1
    assert value(metrics, "torchport_workers", **slow, kind="process") == 1
    assert value(metrics, "torchport_requests_total", **slow, protocol="oip_rest",
                 outcome="unavailable") >= 1  # fmt: skip
