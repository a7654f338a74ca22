"""The management API and `torchport models`, against the real server."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import TOKEN, ServerProcess, running
from tests.helpers import edit_manifest, rewrite

ROW = [0.5] * 32


@pytest.fixture(scope="module")
def mserver(tmp_path_factory: pytest.TempPathFactory, mlp_package: Path) -> Iterator[ServerProcess]:
    with running(
        tmp_path_factory,
        "management",
        [mlp_package],
        TORCHPORT_MAX_PACKAGE_BYTES=str(50 * 1024 * 1024),
    ) as proc:
        yield proc


def api(server: ServerProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {**server.auth, **kwargs.pop("headers", {})}
    return httpx.request(
        method, f"{server.management_url}{path}", headers=headers, timeout=120, **kwargs
    )


def upload(
    server: ServerProcess, package: Path, name: str = "mlp", **params: str
) -> httpx.Response:
    return api(server, "POST", f"/models/{name}", content=package.read_bytes(), params=params)


def snapshot(server: ServerProcess) -> Any:
    models = api(server, "GET", "/models").json()["models"]
    audit = api(server, "GET", "/audit", params={"limit": 10000}).json()["audit"]
    return [
        (m["name"], m["default"], m["previous"], [v["digest"] for v in m["versions"]])
        for m in models
    ], len(audit)


def test_every_route_needs_the_token(mserver: ServerProcess) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-wrong-token"},
        {"Authorization": TOKEN},
    ):
        response = httpx.get(f"{mserver.management_url}/models", headers=headers)
        assert response.status_code == 401
        assert "token" in response.json()["error"]
    response = httpx.put(f"{mserver.management_url}/models/mlp/default", json={"version": 1})
    assert response.status_code == 401


def test_upload_promote_rollback_delete_and_config(
    mserver: ServerProcess, mlp_package: Path
) -> None:
    first = upload(mserver, mlp_package)
    assert first.status_code == 201, first.text
    version = first.json()["version"]
    assert first.json()["default"] != version  # later uploads do not move the default
    promoted = api(mserver, "PUT", "/models/mlp/default", json={"version": version}).json()
    assert promoted["default"] == version
    infer = httpx.post(f"{mserver.url}/v1/models/mlp:predict", json={"instances": [ROW]})
    assert infer.status_code == 200
    meta = httpx.post(
        f"{mserver.url}/v2/models/mlp/infer",
        json={"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": ROW}]},
    ).json()
    assert meta["model_version"] == str(version)
    refused = api(mserver, "DELETE", f"/models/mlp/versions/{version}")
    assert refused.status_code == 409
    assert "is the default" in refused.json()["error"]
    back = api(mserver, "POST", "/models/mlp/rollback").json()
    assert (back["default"], back["previous"]) == (promoted["previous"], version)
    assert api(mserver, "DELETE", f"/models/mlp/versions/{version}").status_code == 200
    gone = httpx.get(f"{mserver.url}/v2/models/mlp/versions/{version}")
    assert gone.status_code == 404
    config = api(mserver, "PUT", "/models/mlp/versions/1/config", json={"max_batch_size": 16})
    assert config.json()["config"] == {"max_batch_size": 16}
    bad = api(mserver, "PUT", "/models/mlp/versions/1/config", json={"max_batch_size": 0})
    assert bad.status_code == 400
    assert "max_batch_size" in bad.json()["error"]
    unknown = api(mserver, "PUT", "/models/mlp/versions/1/config", json={"turbo": True})
    assert unknown.status_code == 400
    assert "unknown key 'turbo'" in unknown.json()["error"]
    crossed = api(mserver, "PUT", "/models/mlp/versions/1/config",
                  json={"workers": 3, "max_workers": 2})  # fmt: skip
    assert crossed.status_code == 400
    assert "max_workers (2) is below workers (3)" in crossed.json()["error"]
    assert api(mserver, "GET", "/models/mlp").json()["versions"][0]["config"] == {
        "max_batch_size": 16
    }  # the refused change left the stored config as it was
    actions = [e["action"] for e in api(mserver, "GET", "/audit").json()["audit"]]
    for action in ("upload", "promote", "rollback", "delete", "config"):
        assert action in actions


def test_a_new_model_name_gets_version_1_as_its_default(
    mserver: ServerProcess, mlp_package: Path
) -> None:
    response = upload(mserver, mlp_package, name="mlp-copy")
    assert response.json()["version"] == 1
    assert response.json()["default"] == 1
    infer = httpx.post(f"{mserver.url}/predictions/mlp-copy", json=ROW)
    assert infer.status_code == 200


def _wrong_example(m: dict[str, Any]) -> dict[str, Any]:
    m["examples"][0]["outputs"]["output"][0][0] += 1.0
    return m


def test_bad_uploads_are_refused_with_the_reason_and_change_nothing(
    mserver: ServerProcess, mlp_package: Path, tmp_path: Path
) -> None:
    def tamper(files: dict[str, bytes]) -> dict[str, bytes]:
        files["model.py"] += b"\nimport os\n"
        return files

    truncated = tmp_path / "cut.tpa"
    truncated.write_bytes(mlp_package.read_bytes()[:3000])
    cases = [
        (rewrite(mlp_package, tmp_path / "t.tpa", tamper), 400, "changed after packaging"),
        (truncated, 400, "truncated"),
        (edit_manifest(mlp_package, tmp_path / "e.tpa", _wrong_example), 400, "does not reproduce"),
        (
            edit_manifest(mlp_package, tmp_path / "v.tpa", lambda m: {**m, "format_version": 9}),
            400,
            "format_version 9",
        ),
    ]
    before = snapshot(mserver)
    for package, status, message in cases:
        response = upload(mserver, package)
        assert response.status_code == status, response.text
        assert message in response.json()["error"]
    assert api(mserver, "POST", "/models/bad name!", content=b"x").status_code == 400
    empty = api(mserver, "POST", "/models/mlp", content=b"")
    assert empty.status_code == 400
    huge = api(mserver, "POST", "/models/mlp", content=b"\0" * (50 * 1024 * 1024 + 1))
    assert huge.status_code == 413
    assert snapshot(mserver) == before


def test_two_uploads_racing_get_consecutive_versions(
    mserver: ServerProcess, mlp_package: Path
) -> None:
    latest = max(v["version"] for v in api(mserver, "GET", "/models/mlp").json()["versions"])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: upload(mserver, mlp_package), range(2)))
    assert [r.status_code for r in results] == [201, 201]
    first, second = sorted(r.json()["version"] for r in results)
    assert first > latest  # numbers of deleted versions are never reused
    assert second == first + 1


def test_promote_and_rollback_under_load_fail_no_request(
    mserver: ServerProcess, mlp_package: Path
) -> None:
    v_new = upload(mserver, mlp_package).json()["version"]
    v_old = api(mserver, "GET", "/models/mlp").json()["default"]
    stop = threading.Event()
    statuses: list[int] = []
    versions: set[str] = set()
    body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": ROW}]}

    def hammer() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(f"{mserver.url}/v2/models/mlp/infer", json=body)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.add(response.json()["model_version"])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(5):
        assert (
            api(mserver, "PUT", "/models/mlp/default", json={"version": v_new}).status_code == 200
        )
        assert api(mserver, "POST", "/models/mlp/rollback").status_code == 200
    stop.set()
    for t in threads:
        t.join()
    assert len(statuses) > 20
    assert set(statuses) == {200}
    assert versions == {str(v_old), str(v_new)}


def test_repository_extension_index_unload_load(mserver: ServerProcess) -> None:
    index = api(mserver, "POST", "/v2/repository/index").json()
    assert {"name": "mlp", "state": "READY"}.items() <= next(
        i for i in index if i["name"] == "mlp"
    ).items()
    assert api(mserver, "POST", "/v2/repository/models/mlp/unload").status_code == 200
    assert httpx.get(f"{mserver.url}/v2/models/mlp/ready").status_code == 503
    refused = httpx.post(f"{mserver.url}/predictions/mlp", json=ROW)
    assert refused.status_code == 503
    assert "unloaded" in refused.json()["error"]
    assert api(mserver, "POST", "/v2/repository/models/mlp/load").status_code == 200
    assert httpx.get(f"{mserver.url}/v2/models/mlp/ready").status_code == 200
    assert api(mserver, "POST", "/v2/repository/models/nope/load").status_code == 404


def test_torchport_models_cli_drives_the_api(mserver: ServerProcess, mlp_package: Path) -> None:
    env = {
        **os.environ,
        "TORCHPORT_TOKEN": TOKEN,
        "TORCHPORT_MANAGEMENT_URL": mserver.management_url,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "torchport", "models", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    uploaded = cli("upload", str(mlp_package), "--name", "cli-model")
    assert uploaded.returncode == 0, uploaded.stderr
    assert "cli-model v1 registered" in uploaded.stdout
    listed = json.loads(cli("list", "--json").stdout)
    assert "cli-model" in {m["name"] for m in listed}
    assert "cli-model" in cli("list").stdout
    assert cli("upload", str(mlp_package), "--name", "cli-model").returncode == 0
    assert "default v2" in cli("promote", "cli-model", "2").stdout
    assert "default v1" in cli("rollback", "cli-model").stdout
    shown = cli("show", "cli-model")
    assert "promote" in shown.stdout
    assert "input" in shown.stdout
    refused = cli("delete", "cli-model", "1")
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("error: version 1 is the default")
    wrong = subprocess.run(
        [sys.executable, "-m", "torchport", "models", "list"],
        env={**env, "TORCHPORT_TOKEN": "x" * 20},
        capture_output=True,
        text=True,
    )
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
