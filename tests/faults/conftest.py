"""Faults injected for real: small filesystems are real tmpfs mounts in a private mount
namespace (`unshare --mount`, as root: CI runs as root), so nothing on the host fills up."""

from __future__ import annotations

import functools
import subprocess

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


def on_small_mounts(**sizes: str) -> tuple[str, ...]:
    """A command prefix: run in a private mount namespace where each path (a keyword, `_`
    for `/`) is a fresh tmpfs of its size, e.g. `on_small_mounts(dev_shm="8m")`. The
    command is exec'd in place, so its pid is the prefix's."""
    if not _can_mount():
        pytest.skip("needs root and unshare --mount to make a small filesystem")
    mounts = [
        f"mount -t tmpfs -o size={size} tmpfs {'/' + name.replace('_', '/')}"
        for name, size in sizes.items()
    ]
    return ("unshare", "--mount", "sh", "-c", " && ".join([*mounts, 'exec "$@"']), "sh")
