"""Faults injected for real: small filesystems are real tmpfs mounts in a private mount
namespace (`unshare --mount`, as root: CI runs as root), so nothing on the host fills up."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import numpy as np
import pytest


@functools.cache
def _can_mount() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def on_small_mounts(sizes: dict[str, str]) -> tuple[str, ...]:
    """A command prefix: run in a private mount namespace where each path (it must exist)
    is a fresh tmpfs of its size, e.g. `on_small_mounts({"/dev/shm": "8m"})`. The command
    is exec'd in place, so its pid is the prefix's."""
    if not _can_mount():
        pytest.skip("needs root and unshare --mount to make a small filesystem")
    mounts = [f"mount -t tmpfs -o size={size} tmpfs {path}" for path, size in sizes.items()]
    return ("unshare", "--mount", "sh", "-c", " && ".join([*mounts, 'exec "$@"']), "sh")


BIG_MODEL = """
import torch


def build() -> torch.nn.Module:
    return torch.nn.Linear(1024, 1024)
"""


@pytest.fixture(scope="session")
def big_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 MiB package: larger than the small disks these tests make."""
    import torch

    import torchport

    work = tmp_path_factory.mktemp("big")
    (work / "model.py").write_text(BIG_MODEL)
    out = work / "big.tpa"
    torch.manual_seed(0)
    torchport.package(
        torch.nn.Linear(1024, 1024),  # 4 MiB of random weights: they do not compress
        name="big",
        code=f"{work / 'model.py'}:build",
        example={"x": np.ones((1, 1024), np.float32)},
        out=out,
    )
    return out
