"""Processes killed with SIGKILL at the worst moments: a server mid-upload (again and
again) restarts on a whole store that serves every version; a worker process killed
under load costs only the requests it held, each answered 503, none lost or hung."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import random
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.cli.test_cli import run
from tests.e2e.server import ServerProcess, oip_body
from tests.e2e.test_workers import configure

ROW = oip_body("input", np.zeros((1, 32), np.float32))


def test_a_server_killed_mid_upload_restarts_on_a_whole_store(
    tmp_path: Path, mlp_package: Path, minilm_package: Path
) -> None:
    rng = random.Random(20)
    store = tmp_path / "store"
    server = ServerProcess(store, [mlp_package]).start()
    body = minilm_package.read_bytes()  # 86 MiB: long enough to be killed inside
    for round_ in range(4):

        def upload(server: ServerProcess = server) -> None:
            with contextlib.suppress(httpx.TransportError):  # the server is gone
                httpx.post(
                    f"{server.management_url}/models/minilm",
                    content=body,
                    headers=server.auth,
                    timeout=120,
                )

        sender = threading.Thread(target=upload)
        sender.start()
        time.sleep(rng.uniform(0.2, 3.0))  # receiving, verifying, loading or storing it
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        server.proc = None
        sender.join(60)
        verified = run("store", "verify", "--store", store)
        assert verified.returncode == 0, (round_, verified.stdout, verified.stderr)
        server.packages = []
        server.start()
        models = httpx.get(f"{server.management_url}/models", headers=server.auth).json()
        for model in models["models"]:
            for v in model["versions"]:
                number = v["version"]
                loaded = httpx.post(
                    f"{server.management_url}/models/{model['name']}/versions/{number}/load",
                    headers=server.auth,
                    timeout=120,
                )
                assert loaded.status_code == 200, (model["name"], number, loaded.text)
        served = httpx.post(f"{server.url}/v2/models/mlp/infer", json=ROW)
        assert served.status_code == 200
    server.stop()


def worker_pids(server: ServerProcess) -> list[int]:
    shown = httpx.get(f"{server.management_url}/models/mlp", headers=server.auth).json()
    pids: list[int] = shown["versions"][0]["workers"]["pids"]
    return pids


@pytest.mark.parametrize("kills", [3])
def test_a_worker_process_killed_under_load_costs_only_its_requests(
    tmp_path: Path, mlp_package: Path, kills: int
) -> None:
    server = ServerProcess(tmp_path / "store", [mlp_package]).start()
    try:
        configure(server, "mlp", worker_kind="process", workers=2)
        stop = threading.Event()
        outcomes: list[int] = []

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    r = http.post(f"{server.url}/v2/models/mlp/infer", json=ROW)
                    outcomes.append(r.status_code)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            clients = [pool.submit(client) for _ in range(8)]
            for _ in range(kills):
                time.sleep(1.0)
                pids = worker_pids(server)
                if pids:
                    os.kill(random.choice(pids), signal.SIGKILL)
            time.sleep(2.0)
            stop.set()
            for c in clients:
                c.result(timeout=60)  # none hung: every request got an answer
        assert set(outcomes) <= {200, 503}, sorted(set(outcomes))
        assert outcomes.count(200) > 100
        assert 0 < outcomes.count(503) <= 8 * kills  # only what the killed workers held...
        deadline = time.monotonic() + 120  # ... and the version recovers its workers
        while len(worker_pids(server)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        server.stop()
