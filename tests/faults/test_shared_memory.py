"""Worker processes on a full `/dev/shm`: a clear 503, never SIGBUS, nothing left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.server import ServerProcess, oip_body
from tests.e2e.test_workers import configure
from tests.faults.conftest import on_small_mounts


def binary_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        }
    ).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def test_a_request_too_big_for_dev_shm_is_refused_and_the_server_lives(
    tmp_path_factory: pytest.TempPathFactory, slow_package: Path
) -> None:
    server = ServerProcess(
        tmp_path_factory.mktemp("shm") / "store",
        [slow_package],
        prefix=on_small_mounts({"/dev/shm": "8m"}),
    ).start()
    try:
        workers = configure(server, "slow", worker_kind="process", workers=1, max_batch_size=1)
        body, headers = binary_request(np.ones((1, 3_000_000), np.float32))  # 12 MB
        big = httpx.post(
            f"{server.url}/v2/models/slow/infer", content=body, headers=headers, timeout=60
        )
        assert big.status_code == 503, big.text
        assert "no room in shared memory (/dev/shm)" in big.json()["error"]
        small = httpx.post(
            f"{server.url}/v2/models/slow/infer",
            json=oip_body("x", np.ones((1, 4), np.float32)),
            timeout=60,
        )
        assert small.status_code == 200, small.text
        assert small.json()["outputs"][0]["data"] == [2.0] * 4
        # The same worker answered: neither it nor the server was killed.
        shown = httpx.get(f"{server.management_url}/models/slow", headers=server.auth).json()
        assert shown["versions"][0]["workers"]["pids"] == workers["pids"]
        assert os.listdir(f"/proc/{server.pid}/root/dev/shm") == []
    finally:
        assert server.stop() == 0, server.output()
