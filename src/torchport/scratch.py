"""Scratch space named for its owner: temporary folders and shared-memory blocks whose
names carry the owning process's id and start time, so that a later start can sweep what
a killed process left behind, and never touch what a live one is using.

A name is `torchport-<kind>-<pid>.<start>-<random>`. The start time (clock ticks since
boot, from `/proc`) tells a dead process from a new one that reuses its id — in a
restarted container every server is pid 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

log = logging.getLogger("torchport.scratch")

SHM_DIR = Path("/dev/shm")
_OWNED = re.compile(r"^torchport-[a-z]+-(\d+)\.(\d+)-")


def _start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


@cache
def _owner_of(pid: int) -> str:
    return f"{pid}.{_start_time(pid) or 0}"


def owner() -> str:
    """This process, as scratch names carry it."""
    return _owner_of(os.getpid())


def scratch_dir(kind: str) -> Path:
    """A new private folder under the temporary directory (`TMPDIR`), owned by this
    process; the caller removes it (`remove`)."""
    return Path(tempfile.mkdtemp(prefix=f"torchport-{kind}-{owner()}-"))


@contextlib.contextmanager
def scratch(kind: str) -> Iterator[Path]:
    """`scratch_dir` for a block: removed when it ends."""
    folder = scratch_dir(kind)
    try:
        yield folder
    finally:
        remove(folder)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def shm_name(kind: str = "tensor") -> str:
    """A name for a new shared-memory block owned by this process."""
    return f"torchport-{kind}-{owner()}-{secrets.token_hex(8)}"


def _alive(pid: int, start: int) -> bool:
    found = _start_time(pid)
    if found is not None:
        return found == start or start == 0
    if Path("/proc/self/stat").exists():
        return False  # /proc works and has no such process
    try:  # no /proc (not Linux): the id alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(places: tuple[Path, ...] | None = None, *, pid: int | None = None) -> int:
    """Remove the scratch folders and shared-memory blocks of dead processes (or, with
    `pid`, of that one process, which the caller knows is dead). Returns how many."""
    places = places or (Path(tempfile.gettempdir()), SHM_DIR)
    removed = 0
    for place in places:
        try:
            entries = list(place.iterdir())
        except OSError:
            continue
        for entry in entries:
            found = _OWNED.match(entry.name)
            if found is None:
                continue
            owner_pid, start = int(found.group(1)), int(found.group(2))
            if pid is not None and owner_pid != pid:
                continue
            if pid is None and _alive(owner_pid, start):
                continue
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove %s, left by a stopped process: %s", entry, exc)
    return removed
