"""A full disk answers one way wherever it strikes (507, `insufficient_storage`, naming the
disk and the room needed), the server lives on, and the store stays whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.server import ServerProcess, oip_body
from tests.faults.conftest import on_small_mounts
from torchport.store import SQLiteStore


def upload(server: ServerProcess, package: Path, name: str) -> httpx.Response:
    return httpx.post(
        f"{server.management_url}/models/{name}",
        content=package.read_bytes(),
        headers=server.auth,
        timeout=120,
    )


def models(server: ServerProcess) -> object:
    return httpx.get(f"{server.management_url}/models", headers=server.auth).json()


def assert_full(response: httpx.Response, disk: Path) -> None:
    assert response.status_code == 507, response.text
    body = response.json()
    assert body["code"] == "insufficient_storage"
    assert f"no space left on the disk of {disk}" in body["error"]
    assert "bytes free" in body["error"]


def test_a_full_store_refuses_the_upload_and_keeps_every_version(
    tmp_path_factory: pytest.TempPathFactory, mlp_package: Path, big_package: Path
) -> None:
    store = tmp_path_factory.mktemp("full-store") / "store"
    store.mkdir()
    server = ServerProcess(store, [mlp_package], prefix=on_small_mounts({str(store): "3m"}))
    server.start()
    try:
        before = models(server)
        refused = upload(server, big_package, "big")
        assert_full(refused, store)
        assert "bytes needed" in refused.json()["error"]
        assert models(server) == before
        # The store as the server sees it (its disk exists only in the server's namespace).
        inside = Path(f"/proc/{server.pid}/root{store}")
        assert SQLiteStore(inside).verify() == []
        assert list((inside / "blobs" / "tmp").iterdir()) == []
        served = httpx.post(
            f"{server.url}/v2/models/mlp/infer", json=oip_body("input", np.zeros((1, 32)))
        )
        assert served.status_code == 200
        assert upload(server, mlp_package, "again").status_code == 201  # room enough for it
    finally:
        assert server.stop() == 0, server.output()


def test_a_full_temporary_disk_refuses_the_upload_naming_it(
    tmp_path_factory: pytest.TempPathFactory, mlp_package: Path, big_package: Path
) -> None:
    root = tmp_path_factory.mktemp("full-tmp")
    tmp = root / "tmp"
    tmp.mkdir()
    server = ServerProcess(
        root / "store", [mlp_package], prefix=on_small_mounts({str(tmp): "2m"}), TMPDIR=str(tmp)
    ).start()
    try:
        before = models(server)
        assert_full(upload(server, big_package, "big"), tmp)
        assert models(server) == before
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        assert list(Path(f"/proc/{server.pid}/root{tmp}").iterdir()) != []  # mlp, unpacked
    finally:
        assert server.stop() == 0, server.output()


UNPACK = """
import json, sys
from pathlib import Path
from torchport.archive import unpack_package
from torchport.errors import TorchportError
try:
    unpack_package(Path(sys.argv[1]), Path(sys.argv[2]) / "files")
except TorchportError as exc:
    print(json.dumps(exc.to_dict()))
"""


def test_unpacking_onto_a_full_disk_is_the_disk_s_fault_not_the_package_s(
    tmp_path: Path, big_package: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    done = subprocess.run(
        [*on_small_mounts({str(dest): "1m"}), sys.executable, "-c", UNPACK, str(big_package),
         str(dest)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    error = json.loads(done.stdout)
    assert error["code"] == "insufficient_storage", error
    assert str(dest / "files") in error["error"]
