"""What a killed process leaves (unpacked packages, a microservice's private store,
upload copies, shared-memory blocks) is swept when a server starts — and what a live
process holds is never touched, even one whose id a dead process once had."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from tests.e2e.server import ServerProcess, oip_body
from tests.e2e.test_frontends import children
from tests.e2e.test_workers import configure
from torchport import scratch

LEAVE = """
import os, signal, sys, time
from multiprocessing import resource_tracker
from torchport.shm_tensors import reserved_block as _reserved_block
from torchport.scratch import scratch_dir
folder = scratch_dir("unpacked")
(folder / "weights.bin").write_bytes(b"x" * 1000)
block = _reserved_block(1000)
# Left to no one: as a block a worker made for the server, or one whose tracker died too.
resource_tracker.unregister(block._name, "shared_memory")
print(folder, block.name, flush=True)
if sys.argv[1] == "die":
    os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: what a crash leaves
time.sleep(600)
"""


def leave_scratch(tmp: Path, how: str) -> tuple[subprocess.Popen[str], Path, Path]:
    """A process that makes a scratch folder and a shared-memory block, then dies (`die`)
    or lives on (`live`)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LEAVE, how],
        env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    folder, block = proc.stdout.readline().split()
    if how == "die":
        proc.wait(30)
    return proc, Path(folder), scratch.SHM_DIR / block


def test_a_start_sweeps_what_killed_processes_left_and_nothing_live(
    tmp_path: Path, mlp_package: Path
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    live = None
    try:
        first = ServerProcess(
            tmp_path / "store", [mlp_package], microservice=True, TMPDIR=str(tmp)
        ).start()
        # A worker process too: its own unpacked copy, and shared-memory blocks in use.
        second = ServerProcess(tmp_path / "store2", [mlp_package], TMPDIR=str(tmp)).start()
        configure(second, "mlp", worker_kind="process", workers=1)
        x = oip_body("input", np.zeros((1, 32), np.float32))
        assert httpx.post(f"{second.url}/v2/models/mlp/infer", json=x).status_code == 200
        _, dead_folder, dead_block = leave_scratch(tmp, "die")
        live, live_folder, live_block = leave_scratch(tmp, "live")
        # Both servers die without a word: their private stores and copies stay behind.
        for server in (first, second):
            assert server.proc is not None
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(30)
            server.proc = None
        time.sleep(1)  # the orphaned worker process notices its parent is gone
        left = {p.name.split("-")[1] for p in tmp.iterdir()}
        assert {"microservice", "unpacked"} <= left
        assert dead_folder.exists()
        assert dead_block.exists()

        third = ServerProcess(tmp_path / "store3", [mlp_package], TMPDIR=str(tmp)).start()
        try:
            assert not dead_folder.exists()
            assert not dead_block.exists()
            assert live_folder.exists()
            assert live_block.exists()
            mine = [p for p in tmp.iterdir() if p.name != live_folder.name]
            assert mine
            # The server's, or its engine's when front ends run beside it.
            owners = [str(pid) for pid in (third.pid, *children(third.pid))]
            assert all(any(f"-{o}." in p.name for o in owners) for p in mine), mine
            assert "removed" in third.output()
            assert "left by stopped torchport" in third.output()
        finally:
            third.stop()
    finally:
        if live is not None:
            live.kill()
            live.wait(30)
            scratch.sweep((tmp, scratch.SHM_DIR), pid=live.pid)


def test_an_owner_is_its_id_and_start_time(tmp_path: Path) -> None:
    folder = scratch.scratch_dir("unpacked")
    try:
        assert folder.name.startswith(f"torchport-unpacked-{scratch.owner()}-")
        pid, start = scratch.owner().split(".")
        assert int(pid) == os.getpid()
        assert int(start) > 0
        # The same id with another start time is another (dead) process: swept.
        stale = Path(str(folder).replace(scratch.owner(), f"{pid}.{int(start) - 1}"))
        stale.mkdir()
        assert scratch.sweep((folder.parent,)) >= 1
        assert not stale.exists()
        assert folder.exists()
    finally:
        scratch.remove(folder)
