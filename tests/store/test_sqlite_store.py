"""The embedded store: numbered versions, aliases, audit, durability and concurrency."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchport.errors import InsufficientStorage
from torchport.store import SQLiteStore


def blob(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / f"pkg-{os.urandom(6).hex()}.tpa"
    path.write_bytes(content)
    return path


@pytest.fixture
def store(store_dir: Path) -> SQLiteStore:
    return SQLiteStore(store_dir)


def test_deleting_a_version_removes_its_blob_unless_shared(
    store: SQLiteStore, tmp_path: Path
) -> None:
    store.add_version("m", blob(tmp_path, b"base"))
    shared = store.add_version("m", blob(tmp_path, b"same"))
    again = store.add_version("m", blob(tmp_path, b"same"))
    assert shared.digest == again.digest
    store.delete_version("m", shared.version)
    assert store.package_path(again).exists()
    store.delete_version("m", again.version)
    assert not store.blobs.path(again.digest).exists()


def test_everything_survives_closing_and_reopening(store_dir: Path, tmp_path: Path) -> None:
    first = SQLiteStore(store_dir)
    first.add_version("m", blob(tmp_path, b"a"), metadata={"k": "v"})
    first.add_version("m", blob(tmp_path, b"b"), promote=True)
    first.set_config("m", 1, {"max_batch_size": 4})
    first.close()
    again = SQLiteStore(store_dir)
    model = again.get_model("m")
    assert (model.default, model.previous) == (2, 1)
    assert model.versions[0].metadata == {"k": "v"}
    assert model.versions[0].config == {"max_batch_size": 4}
    assert len(again.audit()) == 4
    assert again.verify() == []


def test_verify_finds_a_corrupted_or_missing_blob(store: SQLiteStore, tmp_path: Path) -> None:
    a = store.add_version("m", blob(tmp_path, b"a"))
    b = store.add_version("m", blob(tmp_path, b"b"))
    path = store.package_path(a)
    path.chmod(0o644)
    path.write_bytes(b"rotten")
    store.blobs.path(b.digest).unlink()
    problems = store.verify()
    assert any("m v1" in p and "corrupt" in p for p in problems)
    assert any("m v2" in p and "missing" in p for p in problems)


def _writer(root: str, tag: str, count: int) -> None:
    repo = SQLiteStore(Path(root))
    tmp = Path(root).parent
    for i in range(count):
        path = tmp / f"{tag}-{i}.tpa"
        path.write_bytes(f"{tag}-{i}".encode())
        repo.add_version("shared", path, actor=tag)
        if i % 3 == 0:
            repo.promote("shared", repo.get_model("shared").versions[-1].version, actor=tag)
    repo.close()


def test_two_processes_writing_at_once_do_not_corrupt_the_store(store_dir: Path) -> None:
    SQLiteStore(store_dir).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(store_dir), t, 15)) for t in ("p1", "p2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    repo = SQLiteStore(store_dir)
    model = repo.get_model("shared")
    assert [v.version for v in model.versions] == list(range(1, 31))
    contents = {repo.package_path(v).read_bytes() for v in model.versions}
    assert contents == {f"{t}-{i}".encode() for t in ("p1", "p2") for i in range(15)}
    assert sum(e.action == "upload" for e in repo.audit(limit=1000)) == 30
    assert repo.verify() == []


CRASHER = """
import sys
from pathlib import Path
from torchport.store import SQLiteStore
repo = SQLiteStore(Path(sys.argv[1]))
tmp = Path(sys.argv[2])
i = 0
while True:
    p = tmp / f"c{i}.tpa"
    p.write_bytes(bytes([i % 251]) * (256 * 1024 + i))
    repo.add_version("crashy", p)
    i += 1
"""


def test_a_writer_killed_mid_write_never_leaves_a_half_registered_version(
    store_dir: Path, tmp_path: Path
) -> None:
    rng = random.Random(7)
    for _round in range(5):
        proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(store_dir), str(tmp_path)])
        time.sleep(rng.uniform(0.8, 1.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        repo = SQLiteStore(store_dir)
        assert repo.verify() == [], "a row names a missing or partial blob"
        versions = [v.version for v in repo.get_model("crashy").versions]
        assert versions == list(range(1, len(versions) + 1))
        for v in repo.get_model("crashy").versions:
            data = repo.package_path(v).read_bytes()
            assert len(data) == v.size
        repo.close()
    # Whatever a kill left behind is only unreferenced: gc removes it and all stays intact.
    repo = SQLiteStore(store_dir)
    repo.gc()
    assert repo.verify() == []
    referenced = {v.digest for v in repo.get_model("crashy").versions}
    assert repo.blobs.digests() == referenced


def test_a_store_is_private_to_its_owner(tmp_path: Path) -> None:
    assert (SQLiteStore(tmp_path / "new").root.stat().st_mode & 0o777) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    SQLiteStore(shared)
    assert (shared.stat().st_mode & 0o777) == 0o700


def test_a_new_blob_folder_is_synced_into_its_parent(
    store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    info = store.add_version("m", blob(tmp_path, b"first package"))
    folder = store.blobs.path(info.digest).parent
    # The file, its new folder (in sha256/), and the folder's entry in sha256/ itself.
    assert str(folder) in synced
    assert str(folder.parent) in synced


def test_a_database_that_cannot_grow_refuses_the_write_and_keeps_the_rest(
    store: SQLiteStore, tmp_path: Path
) -> None:
    store.add_version("m", blob(tmp_path, b"v1"))
    # SQLite's own "database or disk is full" (SQLITE_FULL), at the page where it strikes.
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    written: dict[str, object] = {}

    def fill() -> None:
        nonlocal written
        for i in range(200):  # each audit row grows the database a little
            store.set_config("m", 1, {"workers": i + 1, "note": "x" * 2000}, actor="t")
            written = {"workers": i + 1, "note": "x" * 2000}

    with pytest.raises(InsufficientStorage, match="no space left on the disk of the store"):
        fill()
    store._db.execute("PRAGMA max_page_count = 1073741823")
    # The failed write left nothing behind: the config is the last one that succeeded.
    assert store.get_version("m", 1).config == written
    assert len(store.audit("m", 1000)) == 1 + (written.get("workers", 0))
    assert store.verify() == []
    store.add_version("m", blob(tmp_path, b"v2"))  # and it goes on once there is room
