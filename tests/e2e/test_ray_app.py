"""`torchport ray deploy`: a package as a plain Ray Serve application (Ray's proxy in front,
torchport's inference app in each replica), on a real local Ray bound to 127.0.0.1, and its
Serve config checked by Ray."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from ray.serve.schema import ServeDeploySchema

import torchport
from tests.cli.test_cli import assert_one_line_error, cli
from tests.e2e.server import free_port, oip_body, wait_ready
from torchport.archive import read_package


@contextmanager
def ray_app(package: Path, log: Path, *options: str) -> Iterator[str]:
    """`torchport ray deploy PACKAGE` on a free port; yields the application's URL once it
    is ready, and checks that SIGTERM stops it (and its local Ray) with exit status 0."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "torchport", "ray", "deploy", str(package),
             "--http-port", str(port), *options],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/{read_package(package).manifest.name}"
        try:
            wait_ready(proc, url, log, timeout=240)
            yield url
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(120) == 0, log.read_text()[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def replica_pids(app: str) -> list[int]:
    """Ray names a replica's process `ray::ServeReplica:APP:DEPLOYMENT`."""
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True)
    return sorted(
        int(line.split()[0]) for line in ps.stdout.splitlines()
        if f"ray::ServeReplica:{app}:" in line
    )  # fmt: skip


def wait_for_replicas(app: str, count: int, seconds: float = 120) -> list[int]:
    deadline = time.monotonic() + seconds
    while len(pids := replica_pids(app)) != count:
        assert time.monotonic() < deadline, f"{app}: {len(pids)} replica(s), never {count}"
        time.sleep(0.5)
    return pids


def infer(url: str, x: np.ndarray, name: str = "mlp") -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{name}/infer", json=oip_body("input", x), timeout=60)


def output(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    return np.array(out["data"], np.float32).reshape(out["shape"])


def test_a_package_runs_as_a_ray_serve_application(mlp_package: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rows = [rng.standard_normal((int(rng.integers(1, 4)), 32)).astype(np.float32)
            for _ in range(24)]  # fmt: skip
    with torchport.load(mlp_package) as model:
        want = [model.predict({"input": x})["output"] for x in rows]
    options = ("--replicas", "2", "--max-request-bytes", str(1 << 20))
    with ray_app(mlp_package, tmp_path / "ray.log", *options) as url:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # batched in the replicas
            got = pool.map(lambda x: output(infer(url, x)), rows)
            for answer, expected in zip(got, want, strict=True):
                np.testing.assert_allclose(answer, expected, atol=1e-5)
        v1 = httpx.post(f"{url}/v1/models/mlp:predict", json={"instances": rows[0].tolist()})
        np.testing.assert_allclose(v1.json()["predictions"], want[0], atol=1e-5)
        bad = infer(url, np.ones((1, 3)))
        assert bad.status_code == 400
        assert bad.json()["field"] == "input"
        assert httpx.get(f"{url}/v2/models/nope").status_code == 404
        # Behind Ray's proxy, which has no body limit, each replica keeps its own.
        big = httpx.post(f"{url}/v2/models/mlp/infer", content=b"[" + b"0.0," * (1 << 19))
        assert big.status_code == 413, big.text
        assert "over the limit" in big.json()["error"]
        # Each replica is torchport's own inference app: every protocol, and its metrics.
        sample = httpx.post(f"{url}/predictions/mlp", json=rows[0][0].tolist())
        np.testing.assert_allclose(sample.json(), want[0][0], atol=1e-5)
        assert httpx.get(f"{url}/v2/models/mlp").json()["versions"] == ["1"]
        # Ray's proxy sends each scrape to either replica; both answered the rows above
        # unless Ray's router gave them all to one, so a few scrapes find it.
        counted = (
            'torchport_requests_total{model="mlp",outcome="ok",protocol="oip_rest",version="1"}'
        )
        scrapes = [httpx.get(f"{url}/metrics") for _ in range(10)]
        assert {m.status_code for m in scrapes} == {200}
        assert any(counted in m.text for m in scrapes)

        # A replica killed under load: Ray's proxy retries what had not reached it; a
        # request running on it at that moment gets Ray's error answer. None hangs.
        [victim, _] = wait_for_replicas("torchport-mlp", 2)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            load = [pool.submit(infer, url, rows[i % len(rows)]) for i in range(200)]
            time.sleep(0.1)
            os.kill(victim, signal.SIGKILL)
            statuses = [f.result().status_code for f in load]
        assert set(statuses) <= {200, 500, 503}, statuses
        assert statuses.count(200) >= 150, statuses
        deadline = time.monotonic() + 180
        while victim in (pids := replica_pids("torchport-mlp")) or len(pids) != 2:
            assert time.monotonic() < deadline, f"the replica was not replaced: {pids}"
            time.sleep(0.5)
        for x, expected in zip(rows[:5], want, strict=False):
            np.testing.assert_allclose(output(infer(url, x)), expected, atol=1e-5)


def test_replicas_autoscale_from_the_packages_runtime_config(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                 torch.nn.Linear(64, 8)).eval()  # fmt: skip
    package = tmp_path / "scaled.tpa"
    runtime = {"workers": 1, "max_workers": 2, "max_batch_size": 4,
               "scale_up_delay_s": 0, "scale_down_delay_s": 2}  # fmt: skip
    x = np.ones((1, 32), np.float32)
    torchport.package(module, name="scaled", example={"input": x}, out=package,
                      runtime=runtime)  # fmt: skip
    with ray_app(package, tmp_path / "ray.log") as url:
        assert len(replica_pids("torchport-scaled")) == 1
        stop = threading.Event()

        def client() -> set[int]:
            seen = set()
            while not stop.is_set():
                seen.add(infer(url, x, "scaled").status_code)
            return seen

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            clients = [pool.submit(client) for _ in range(16)]
            try:  # more requests in flight than one replica's batch: Ray adds one
                wait_for_replicas("torchport-scaled", 2)
            finally:
                stop.set()
            assert set().union(*(c.result() for c in clients)) == {200}
        wait_for_replicas("torchport-scaled", 1)  # idle: back to `workers`
        assert infer(url, x, "scaled").status_code == 200


def test_the_serve_config_is_one_ray_accepts(mlp_package: Path, tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    done = cli("ray", "deploy", mlp_package, "--replicas", "3", "--max-replicas", "5",
               "--config-out", config, "--config-only")  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = yaml.safe_load(config.read_text())
    ServeDeploySchema.model_validate(doc)
    [application] = doc["applications"]
    assert application["import_path"] == "torchport.ray_app:build_app"
    assert (application["args"]["replicas"], application["args"]["max_replicas"]) == (3, 5)
    assert application["args"]["package"] == str(mlp_package.resolve())
    assert_one_line_error(cli("ray", "deploy", mlp_package, "--config-only"), "--config-out")
    assert_one_line_error(cli("ray", "deploy", tmp_path / "none.tpa"), "does not exist")
    assert_one_line_error(
        cli("ray", "deploy", mlp_package, "--replicas", "3", "--max-replicas", "2"),
        "--max-replicas (2) is below the replicas (3)",
    )


pytestmark = pytest.mark.timeout(600)
