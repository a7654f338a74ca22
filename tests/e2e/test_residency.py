"""A real server with fifty on-demand models and a budget that holds ten: every request
under concurrency is answered correctly, and its memory stays within the budget plus a
margin."""

from __future__ import annotations

import concurrent.futures
import random
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import MODEL_BYTES
from tests.e2e.server import ServerProcess, upload

BUDGET = 10 * MODEL_BYTES + MODEL_BYTES // 2
MARGIN = 64 * 1024 * 1024
"""What a server's memory may grow by beyond the budget with fifty models registered and
ten resident (their Python objects, handlers, batchers, threads; docs/server.md)."""


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_fifty_on_demand_models_stay_within_the_budget_under_load(
    tmp_path: Path, fifty_models: list[Path]
) -> None:
    server = ServerProcess(
        tmp_path / "store",
        TORCHPORT_MAX_RESIDENT_BYTES=str(BUDGET),
        TORCHPORT_RESIDENCY="on_demand",
    ).start()
    try:
        upload(server, fifty_models[0], "s00")
        client = httpx.Client(timeout=60)

        def infer(index: int) -> None:
            x = np.arange(4, dtype=np.float32) + index
            body = {
                "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x.tolist()}]
            }
            answer = client.post(f"{server.url}/v2/models/s{index:02d}/infer", json=body)
            assert answer.status_code == 200, answer.text
            got = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_allclose(got, x * (index + 1))

        infer(0)
        baseline = rss(server.pid)  # one model resident, the server warm
        for index, package in enumerate(fifty_models[1:], start=1):
            upload(server, package, f"s{index:02d}")
        order = list(range(50)) * 3
        random.Random(3).shuffle(order)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(infer, order))
        grown = rss(server.pid) - baseline
        assert grown < BUDGET + MARGIN, f"grew {grown / 2**20:.0f} MiB"
        shown = httpx.get(f"{server.management_url}/models", headers=server.auth).json()
        resident = [v["resident"] for m in shown["models"] for v in m["versions"] if v["resident"]]
        assert 1 <= len(resident) <= 10
        assert sum(r["bytes"] for r in resident) <= BUDGET
        assert {r["policy"] for r in resident} == {"on_demand"}
    finally:
        server.stop()
