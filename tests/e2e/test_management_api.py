"""`torchport models` (its entry point, in this process) against a real server, and a
restart that brings every model back (the management routes themselves:
tests/transports/test_management_app.py)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from tests.cli.test_cli import cli
from tests.e2e.server import TOKEN, ServerProcess, running

ROW = [0.5] * 32


@pytest.fixture(scope="module")
def mserver(tmp_path_factory: pytest.TempPathFactory, mlp_package: Path) -> Iterator[ServerProcess]:
    with running(tmp_path_factory, "management", [mlp_package]) as proc:
        yield proc


def api(server: ServerProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, f"{server.management_url}{path}", headers=server.auth, timeout=120, **kwargs
    )


def test_torchport_models_cli_drives_the_api(mserver: ServerProcess, mlp_package: Path) -> None:
    env = {"TORCHPORT_TOKEN": TOKEN, "TORCHPORT_MANAGEMENT_URL": mserver.management_url}

    def models(*args: str, **changed: str) -> subprocess.CompletedProcess[str]:
        with mock.patch.dict(os.environ, {**env, **changed}):
            return cli("models", *args)

    uploaded = models("upload", str(mlp_package), "--name", "cli-model")
    assert uploaded.returncode == 0, uploaded.stderr
    assert "cli-model v1 registered" in uploaded.stdout
    listed = json.loads(models("list", "--json").stdout)
    assert "cli-model" in {m["name"] for m in listed}
    assert "cli-model" in models("list").stdout
    assert models("upload", str(mlp_package), "--name", "cli-model").returncode == 0
    assert "default v2" in models("promote", "cli-model", "2").stdout
    assert "default v1" in models("rollback", "cli-model").stdout
    assert "cli-model v2 loaded" in models("load", "cli-model", "2").stdout
    served = httpx.post(
        f"{mserver.url}/v2/models/cli-model/versions/2/infer",
        json={"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": ROW}]},
    )
    assert served.status_code == 200, served.text
    assert "cli-model v2 unloaded" in models("unload", "cli-model", "2").stdout
    not_now = models("unload", "cli-model", "1")
    assert not_now.returncode == 1
    assert not_now.stderr.strip().startswith("error: version 1 is the default")
    shown = models("show", "cli-model")
    assert "promote" in shown.stdout
    assert "input" in shown.stdout
    refused = models("delete", "cli-model", "1")
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("error: version 1 is the default")
    wrong = models("list", TORCHPORT_TOKEN="x" * 20)
    assert wrong.returncode == 1
    assert "wrong bearer token" in wrong.stderr


def test_a_restart_brings_everything_back_without_reuploading(mserver: ServerProcess) -> None:
    before = api(mserver, "GET", "/models").json()["models"]
    audit_before = api(mserver, "GET", "/audit", params={"limit": 10000}).json()["audit"]
    assert mserver.stop() == 0
    mserver.packages = []  # nothing is uploaded again
    mserver.start()
    after = api(mserver, "GET", "/models").json()["models"]
    strip = lambda models: [  # noqa: E731
        (
            m["name"],
            m["default"],
            m["previous"],
            [(v["version"], v["digest"]) for v in m["versions"]],
        )
        for m in models
    ]
    assert strip(after) == strip(before)
    assert api(mserver, "GET", "/audit", params={"limit": 10000}).json()["audit"] == audit_before
    response = httpx.post(f"{mserver.url}/predictions/mlp", json=ROW)
    assert response.status_code == 200
