"""The object store against a real S3 API on loopback (moto's server): replicas writing
at once, the verified cache, corrupt and missing objects, a download cut short."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.s3server import S3Server, s3_env
from torchport.errors import InvalidInput, StoreError
from torchport.store import S3Location, open_store
from torchport.store import s3 as s3_module
from torchport.store.s3 import S3Store


def blob(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / f"pkg-{os.urandom(6).hex()}.tpa"
    path.write_bytes(content)
    return path


def replica(url: str, tmp_path: Path, name: str = "") -> S3Store:
    """A store as one replica opens it: the shared bucket, a cache of its own."""
    opened = open_store(url, cache_dir=tmp_path / f"cache-{name or os.urandom(4).hex()}")
    assert isinstance(opened, S3Store)
    return opened


def _uploader(url: str, cache: str, tag: str, count: int) -> None:
    repo = open_store(url, cache_dir=Path(cache))
    for i in range(count):
        path = Path(cache) / f"{tag}-{i}.tpa"
        path.write_bytes(f"{tag}-{i}".encode())
        info = repo.add_version("shared", path, actor=tag)
        if i % 3 == 0:
            repo.promote("shared", info.version, actor=tag)


def test_replicas_uploading_at_once_get_distinct_versions_and_lose_nothing(
    s3_url: str, tmp_path: Path
) -> None:
    ctx = multiprocessing.get_context("spawn")
    writers = [
        ctx.Process(target=_uploader, args=(s3_url, str(tmp_path / f"c{i}"), f"w{i}", 8))
        for i in range(3)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
        assert w.exitcode == 0
    store = replica(s3_url, tmp_path)
    model = store.get_model("shared")
    assert [v.version for v in model.versions] == list(range(1, 25))
    uploads = [e for e in store.audit("shared", limit=1000) if e.action == "upload"]
    assert sorted(e.version or 0 for e in uploads) == list(range(1, 25))
    contents = {store.package_path(v).read_bytes() for v in model.versions}
    assert contents == {f"w{w}-{i}".encode() for w in range(3) for i in range(8)}
    assert store.verify() == []


def test_a_change_made_by_one_replica_is_read_by_the_other(s3_url: str, tmp_path: Path) -> None:
    a, b = replica(s3_url, tmp_path, "a"), replica(s3_url, tmp_path, "b")
    a.add_version("m", blob(tmp_path, b"1"))
    assert b.get_model("m").default == 1
    a.add_version("m", blob(tmp_path, b"2"), promote=True)
    assert b.get_model("m").default == 2
    # b's copy of the document is stale now; its change is applied to the current one.
    b.set_config("m", 1, {"workers": 2})
    a.rollback("m")
    assert (b.get_model("m").default, b.get_version("m", 1).config) == (1, {"workers": 2})
    a.delete_version("m", 2)
    assert [m.name for m in b.list_models()] == ["m"]
    assert [v.version for v in b.get_model("m").versions] == [1]


def test_packages_are_downloaded_once_into_the_cache(
    s3_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    a = replica(s3_url, tmp_path, "a")
    info = a.add_version("m", blob(tmp_path, b"weights"))
    b = replica(s3_url, tmp_path, "b")
    assert b.package_path(info).read_bytes() == b"weights"
    # The bucket loses the object: the copy verified on the way in is still served, also
    # after a restart on the same cache.
    location = S3Location.parse(s3_url)
    s3_server.client().delete_object(
        Bucket=location.bucket, Key=f"{location.prefix}blobs/sha256/{info.digest}"
    )
    again = replica(s3_url, tmp_path, "b")
    assert again.package_path(info).read_bytes() == b"weights"
    with pytest.raises(StoreError, match="missing from"):
        replica(s3_url, tmp_path, "c").package_path(info)


def test_a_corrupt_object_is_refused_and_reported_never_served(
    s3_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    a = replica(s3_url, tmp_path, "a")
    info = a.add_version("m", blob(tmp_path, b"good weights"))
    location = S3Location.parse(s3_url)
    s3_server.client().put_object(
        Bucket=location.bucket,
        Key=f"{location.prefix}blobs/sha256/{info.digest}",
        Body=b"evil weights",
    )
    b = replica(s3_url, tmp_path, "b")
    with pytest.raises(StoreError, match=r"m v1 in s3://.* is corrupt.*not served"):
        b.package_path(info)
    assert not b.blobs.path(info.digest).exists()
    assert list(b.blobs.tmp.iterdir()) == []
    assert any("m v1" in p and "corrupt" in p for p in b.verify())


def test_a_download_cut_short_leaves_nothing_that_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = S3Server(slow_blobs=200_000)
    try:
        env = {**s3_env(), "AWS_ENDPOINT_URL_S3": slow.endpoint}
        for key, value in env.items():
            if key.startswith("AWS_"):
                monkeypatch.setenv(key, value)
        url = f"s3://{slow.bucket('slow-' + os.urandom(4).hex())}/p"
        payload = os.urandom(2_000_000)  # ten seconds at the drip's pace (the first time)
        info = replica(url, tmp_path, "writer").add_version("m", blob(tmp_path, payload))
        cache = tmp_path / "cache-reader"
        code = (
            "import sys; from pathlib import Path; from torchport.store import open_store\n"
            f"s = open_store({url!r}, cache_dir=Path({str(cache)!r}))\n"
            "print('start', flush=True); s.package_path(s.get_version('m', 1))\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "start"
        deadline = time.monotonic() + 20
        parts = cache / "blobs" / "tmp"
        while not any(p.stat().st_size > 0 for p in parts.glob("*.part")):
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        restarted = replica(url, tmp_path, "reader")
        assert not restarted.blobs.path(info.digest).exists()
        assert restarted.package_path(info).read_bytes() == payload
    finally:
        slow.stop()


def test_gc_removes_only_blobs_no_version_names(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = replica(s3_url, tmp_path)
    keep = store.add_version("m", blob(tmp_path, b"keep"))
    gone = store.add_version("m", blob(tmp_path, b"gone"))
    store.add_version("n", blob(tmp_path, b"keep"))  # the same bytes, another model
    store.delete_version("m", gone.version)
    assert store.gc() == 0  # too new: an upload may be about to name it
    monkeypatch.setattr(s3_module, "BLOB_GRACE", s3_module.timedelta(0))
    assert store.gc() == 1
    assert replica(s3_url, tmp_path).package_path(keep).read_bytes() == b"keep"
    assert store.verify() == []


def test_bad_locations_are_clear_errors(s3_url: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not an S3 bucket name"):
        open_store("s3://Bad_Bucket/x")
    with pytest.raises(InvalidInput, match=r"gs:// is not a store"):
        open_store("gs://bucket/x")
    with pytest.raises(StoreError, match="bucket of s3://no-such-bucket-here/x does not exist"):
        open_store("s3://no-such-bucket-here/x", cache_dir=tmp_path / "c")
