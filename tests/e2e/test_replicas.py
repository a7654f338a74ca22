"""Replicas on one object store (a real S3 API on loopback): what one is told, the other
serves within the store's poll bound; racing uploads through both get distinct numbers; a
restart serves from the verified cache."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import torchport
from tests.e2e.server import ServerProcess, oip_body, upload
from tests.s3server import S3Server, s3_env
from torchport.store import S3Location

BOUND_S = 5.0
"""The default poll (2 s) plus loading `mlp`, with room for a loaded CI machine."""


@pytest.fixture
def replicas(s3_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a = ServerProcess(tmp_path / "a" / "cache", location=s3_url)
    b = ServerProcess(tmp_path / "b" / "cache", location=s3_url)
    for server in (a, b):
        server.store.parent.mkdir(parents=True)
        server.start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def infer(server: ServerProcess, x: np.ndarray) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/mlp/infer", json=oip_body("input", x), timeout=30)


def within(bound: float, check: Callable[[], bool]) -> float:
    """Seconds until `check()` holds; fails past `bound`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < bound, f"not seen within {bound} s"
        time.sleep(0.05)
    return time.monotonic() - started


def answered_by(server: ServerProcess, x: np.ndarray, version: int) -> bool:
    answer = infer(server, x)
    return answer.status_code == 200 and answer.json()["model_version"] == str(version)


def test_replicas_on_one_bucket_serve_what_either_is_told(
    replicas: tuple[ServerProcess, ServerProcess], mlp_package: Path, mlp_input: np.ndarray
) -> None:
    a, b = replicas
    assert upload(a, mlp_package, "mlp") == 1
    within(BOUND_S, lambda: answered_by(b, mlp_input, 1))
    ready = httpx.get(f"{b.url}/v2/models/mlp/ready", timeout=5)
    assert ready.status_code == 200
    with torchport.load(mlp_package) as model:
        want = model.predict({"input": mlp_input})["output"]
    got = np.asarray(infer(b, mlp_input).json()["outputs"][0]["data"], dtype=np.float32)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)

    # A promote through A is served by B; a rollback through B by A.
    answer = httpx.post(
        f"{a.management_url}/models/mlp?promote=true",
        content=mlp_package.read_bytes(),
        headers=a.auth,
        timeout=120,
    )
    assert answer.status_code == 201, answer.text
    within(BOUND_S, lambda: answered_by(b, mlp_input, 2))
    back = httpx.post(f"{b.management_url}/models/mlp/rollback", headers=b.auth, timeout=60)
    assert back.status_code == 200, back.text
    within(BOUND_S, lambda: answered_by(a, mlp_input, 1))

    # A config change through B reaches A's live version.
    config = httpx.put(
        f"{b.management_url}/models/mlp/versions/1/config",
        json={"max_batch_size": 5},
        headers=b.auth,
        timeout=60,
    )
    assert config.status_code == 200, config.text

    def a_has_config() -> bool:
        shown = httpx.get(f"{a.management_url}/models/mlp", headers=a.auth, timeout=10).json()
        return any(v.get("config") == {"max_batch_size": 5} for v in shown["versions"])

    within(BOUND_S, a_has_config)


def test_racing_uploads_through_two_replicas_get_n_and_n_plus_1(
    replicas: tuple[ServerProcess, ServerProcess], mlp_package: Path
) -> None:
    a, b = replicas
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda server: upload(server, mlp_package, "mlp"), [a, b, a, b]))
    assert sorted(versions) == [1, 2, 3, 4]
    for server in (a, b):
        shown = httpx.get(f"{server.management_url}/models/mlp", headers=server.auth, timeout=10)
        assert [v["version"] for v in shown.json()["versions"]] == [1, 2, 3, 4]
    uploads = httpx.get(
        f"{a.management_url}/audit", params={"model": "mlp"}, headers=a.auth, timeout=10
    ).json()
    versions = sorted(e["version"] for e in uploads["audit"] if e["action"] == "upload")
    assert versions == [1, 2, 3, 4]


def test_a_delete_through_one_replica_is_followed_by_the_other_and_a_restart_serves_from_cache(
    replicas: tuple[ServerProcess, ServerProcess],
    mlp_package: Path,
    mlp_input: np.ndarray,
    s3_url: str,
    s3_server: S3Server,
) -> None:
    a, b = replicas
    upload(a, mlp_package, "mlp")
    upload(a, mlp_package, "other")
    within(BOUND_S, lambda: answered_by(b, mlp_input, 1))
    gone = httpx.delete(f"{a.management_url}/models/other/versions/1", headers=a.auth, timeout=30)
    assert gone.status_code in (200, 204), gone.text
    within(
        BOUND_S,
        lambda: httpx.get(f"{b.url}/v2/models/other/ready", timeout=5).status_code == 404,
    )
    # B restarts with the bucket's package objects gone: it serves from its verified cache.
    b.stop()
    location = S3Location.parse(s3_url)
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=location.bucket, Prefix=f"{location.prefix}blobs/")
    for item in listed["Contents"]:
        client.delete_object(Bucket=location.bucket, Key=item["Key"])
    b.start()
    assert answered_by(b, mlp_input, 1)


def test_a_corrupt_package_in_the_bucket_is_refused_and_reported_never_served(
    s3_url: str, s3_server: S3Server, tmp_path: Path, mlp_package: Path, mlp_input: np.ndarray
) -> None:
    a = ServerProcess(tmp_path / "a" / "cache", location=s3_url)
    a.store.parent.mkdir(parents=True)
    with contextlib.closing(_Stopper(a.start())):
        digest = httpx.post(
            f"{a.management_url}/models/mlp",
            content=mlp_package.read_bytes(),
            headers=a.auth,
            timeout=120,
        ).json()["digest"]
    location = S3Location.parse(s3_url)
    rotten = bytearray(mlp_package.read_bytes())
    rotten[len(rotten) // 2] ^= 0xFF
    s3_server.client().put_object(
        Bucket=location.bucket, Key=f"{location.prefix}blobs/sha256/{digest}", Body=bytes(rotten)
    )
    b = ServerProcess(tmp_path / "b" / "cache", location=s3_url)
    b.store.parent.mkdir(parents=True)
    with contextlib.closing(_Stopper(b.start(until="live"))):
        assert httpx.get(f"{b.url}/v2/health/ready", timeout=5).status_code == 503
        assert httpx.get(f"{b.url}/v2/models/mlp/ready", timeout=5).status_code != 200
        answer = infer(b, mlp_input)
        assert answer.status_code == 503
        assert "corrupt" in answer.text
        assert "is corrupt" in b.output()
        assert not any((b.store / "blobs" / "sha256").rglob(digest))


class _Stopper:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def close(self) -> None:
        self.server.stop()


def test_a_replica_killed_in_the_middle_of_a_download_recovers(
    tmp_path: Path, mlp_package: Path, mlp_input: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = S3Server(slow_blobs=20_000)  # the package takes seconds to download
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", slow.endpoint)
        for key, value in s3_env().items():
            if key.startswith("AWS_"):
                monkeypatch.setenv(key, value)
        url = f"s3://{slow.bucket('slow-' + os.urandom(4).hex())}/store"
        a = ServerProcess(tmp_path / "a" / "cache", location=url)
        a.store.parent.mkdir(parents=True)
        with contextlib.closing(_Stopper(a.start())):
            upload(a, mlp_package, "mlp")
        b = ServerProcess(tmp_path / "b" / "cache", location=url)
        b.store.parent.mkdir(parents=True)
        b.start(until="")  # it downloads the package before it serves
        parts = b.store / "blobs" / "tmp"
        within(60, lambda: any(parts.glob("*.part")))
        time.sleep(1)  # well into the download
        assert b.proc is not None
        b.proc.kill()  # SIGKILL: no clean-up of its own
        b.proc.wait(10)
        b.proc = None
        assert not list((b.store / "blobs").glob("sha256/*/*"))  # nothing half-written kept
        with contextlib.closing(_Stopper(b.start())):
            assert answered_by(b, mlp_input, 1)
    finally:
        slow.stop()
