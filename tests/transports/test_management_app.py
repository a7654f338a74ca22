"""The management API: token, upload, promote, rollback, delete, config, the repository
extension — on the management app in process."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import TOKEN
from tests.helpers import edit_manifest, rewrite
from tests.inprocess import InProcess, in_process
from torchport.settings import Limits

ROW = [0.5] * 32


@pytest.fixture(scope="module")
def mserver(tmp_path_factory: pytest.TempPathFactory, mlp_package: Path) -> Iterator[InProcess]:
    store = tmp_path_factory.mktemp("management") / "store"
    limits = Limits(max_package_bytes=50 * 1024 * 1024)
    with in_process(store, [mlp_package], limits=limits) as served:
        yield served


def api(server: InProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {**server.auth, **kwargs.pop("headers", {})}
    return server.admin.request(method, path, headers=headers, **kwargs)


def upload(server: InProcess, package: Path, name: str = "mlp", **params: str) -> httpx.Response:
    return api(server, "POST", f"/models/{name}", content=package.read_bytes(), params=params)


def snapshot(server: InProcess) -> Any:
    models = api(server, "GET", "/models").json()["models"]
    audit = api(server, "GET", "/audit", params={"limit": 10000}).json()["audit"]
    return [
        (m["name"], m["default"], m["previous"], [v["digest"] for v in m["versions"]])
        for m in models
    ], len(audit)


def test_the_models_list_reports_the_gpus_as_torch_sees_them(mserver: InProcess) -> None:
    from dataclasses import asdict

    from torchport.runtime.devices import device_figures

    listed = api(mserver, "GET", "/models").json()
    seen = [asdict(f) for f in device_figures()]
    assert [d["index"] for d in listed["devices"]] == [d["index"] for d in seen]
    for got, now in zip(listed["devices"], seen, strict=True):
        assert (got["name"], got["total_bytes"]) == (now["name"], now["total_bytes"])
        assert 0 <= got["allocated_bytes"] <= got["reserved_bytes"] <= got["total_bytes"]


def test_every_route_needs_the_token(mserver: InProcess) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-wrong-token"},
        {"Authorization": TOKEN},
    ):
        response = mserver.admin.get("/models", headers=headers)
        assert response.status_code == 401
        assert "token" in response.json()["error"]
    response = mserver.admin.put("/models/mlp/default", json={"version": 1})
    assert response.status_code == 401


def test_upload_promote_rollback_delete_and_config(mserver: InProcess, mlp_package: Path) -> None:
    first = upload(mserver, mlp_package)
    assert first.status_code == 201, first.text
    version = first.json()["version"]
    assert first.json()["default"] != version  # later uploads do not move the default
    promoted = api(mserver, "PUT", "/models/mlp/default", json={"version": version}).json()
    assert promoted["default"] == version
    infer = mserver.http.post("/v1/models/mlp:predict", json={"instances": [ROW]})
    assert infer.status_code == 200
    meta = mserver.http.post(
        "/v2/models/mlp/infer",
        json={"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": ROW}]},
    ).json()
    assert meta["model_version"] == str(version)
    refused = api(mserver, "DELETE", f"/models/mlp/versions/{version}")
    assert refused.status_code == 409
    assert "is the default" in refused.json()["error"]
    back = api(mserver, "POST", "/models/mlp/rollback").json()
    assert (back["default"], back["previous"]) == (promoted["previous"], version)
    assert api(mserver, "DELETE", f"/models/mlp/versions/{version}").status_code == 200
    gone = mserver.http.get(f"/v2/models/mlp/versions/{version}")
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
    mserver: InProcess, mlp_package: Path
) -> None:
    response = upload(mserver, mlp_package, name="mlp-copy")
    assert response.json()["version"] == 1
    assert response.json()["default"] == 1
    infer = mserver.http.post("/predictions/mlp-copy", json=ROW)
    assert infer.status_code == 200


def _wrong_example(m: dict[str, Any]) -> dict[str, Any]:
    m["examples"][0]["outputs"]["output"][0][0] += 1.0
    return m


def test_bad_uploads_are_refused_with_the_reason_and_change_nothing(
    mserver: InProcess, mlp_package: Path, tmp_path: Path
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


def test_two_uploads_racing_get_consecutive_versions(mserver: InProcess, mlp_package: Path) -> None:
    latest = max(v["version"] for v in api(mserver, "GET", "/models/mlp").json()["versions"])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: upload(mserver, mlp_package), range(2)))
    assert [r.status_code for r in results] == [201, 201]
    first, second = sorted(r.json()["version"] for r in results)
    assert first > latest  # numbers of deleted versions are never reused
    assert second == first + 1


def test_promote_and_rollback_under_load_fail_no_request(
    mserver: InProcess, mlp_package: Path
) -> None:
    v_new = upload(mserver, mlp_package).json()["version"]
    v_old = api(mserver, "GET", "/models/mlp").json()["default"]
    stop = threading.Event()
    statuses: list[int] = []
    versions: set[str] = set()
    body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": ROW}]}

    def hammer() -> None:
        while not stop.is_set():
            response = mserver.http.post("/v2/models/mlp/infer", json=body)
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


def test_repository_extension_index_unload_load(mserver: InProcess) -> None:
    index = api(mserver, "POST", "/v2/repository/index").json()
    assert {"name": "mlp", "state": "READY"}.items() <= next(
        i for i in index if i["name"] == "mlp"
    ).items()
    assert api(mserver, "POST", "/v2/repository/models/mlp/unload").status_code == 200
    assert mserver.http.get("/v2/models/mlp/ready").status_code == 503
    refused = mserver.http.post("/predictions/mlp", json=ROW)
    assert refused.status_code == 503
    assert "unloaded" in refused.json()["message"]  # TorchServe's error shape
    assert api(mserver, "POST", "/v2/repository/models/mlp/load").status_code == 200
    assert mserver.http.get("/v2/models/mlp/ready").status_code == 200
    assert api(mserver, "POST", "/v2/repository/models/nope/load").status_code == 404
