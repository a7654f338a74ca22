"""`torchport ray deploy`: a package as a plain Ray Serve application (Ray's proxy and
batching), on a real local Ray bound to 127.0.0.1, and its Serve config checked by Ray."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

import torchport
from tests.cli.test_cli import assert_one_line_error, run
from tests.e2e.server import free_port, oip_body


def test_a_package_runs_as_a_ray_serve_application(mlp_package: Path, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "ray.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchport", "ray", "deploy", str(mlp_package),
         "--http-port", str(port), "--replicas", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/mlp"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "ray.log").read_text()
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the Ray Serve application never became ready"
            time.sleep(0.5)
        rng = np.random.default_rng(2)
        rows = [rng.standard_normal((int(rng.integers(1, 4)), 32)).astype(np.float32)
                for _ in range(24)]  # fmt: skip
        with torchport.load(mlp_package) as model:
            want = [model.predict({"input": x})["output"] for x in rows]

        def infer(x: np.ndarray) -> np.ndarray:
            r = httpx.post(f"{url}/v2/models/mlp/infer", json=oip_body("input", x), timeout=60)
            assert r.status_code == 200, r.text
            out = r.json()["outputs"][0]
            return np.array(out["data"], np.float32).reshape(out["shape"])

        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # batched by Ray
            for got, expected in zip(pool.map(infer, rows), want, strict=True):
                np.testing.assert_allclose(got, expected, atol=1e-5)
        v1 = httpx.post(f"{url}/v1/models/mlp:predict", json={"instances": rows[0].tolist()})
        np.testing.assert_allclose(v1.json()["predictions"], want[0], atol=1e-5)
        bad = httpx.post(f"{url}/v2/models/mlp/infer", json=oip_body("input", np.ones((1, 3))))
        assert bad.status_code == 400
        assert bad.json()["field"] == "input"
        assert httpx.get(f"{url}/v2/models/nope").status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_the_serve_config_is_one_ray_accepts(mlp_package: Path, tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    done = run("ray", "deploy", mlp_package, "--replicas", "3", "--config-out", config,
               "--config-only")  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = yaml.safe_load(config.read_text())
    ServeDeploySchema.model_validate(doc)
    [application] = doc["applications"]
    assert application["import_path"] == "torchport.transports.ray_serve:build_app"
    assert application["args"]["replicas"] == 3
    assert application["args"]["package"] == str(mlp_package.resolve())
    assert_one_line_error(run("ray", "deploy", mlp_package, "--config-only"), "--config-out")
    assert_one_line_error(run("ray", "deploy", tmp_path / "none.tpa"), "does not exist")


pytestmark = pytest.mark.timeout(600)
