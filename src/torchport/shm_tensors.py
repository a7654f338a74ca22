"""Tensors between processes without pickles: the Open Inference Protocol's raw layout of
each tensor, one after another, described by plain data (name, datatype, shape, offset,
size) — in one shared-memory block, or in bytes the caller carries itself when small.

Worker processes and front-end processes both hand tensors over this way. The process
that makes a block names it for itself (`scratch.shm_name`, swept when it is dead) and
reserves its pages first: a sparse block on a full `/dev/shm` would fault (SIGBUS, killing
the process) where a reserved one raises.
"""

from __future__ import annotations

import contextlib
import errno
import os
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any

from torchport.errors import Unavailable
from torchport.scratch import shm_name
from torchport.tensors import from_raw, to_raw
from torchport.types import Datatype, Tensors

Described = list[dict[str, Any]]


def describe(tensors: Tensors) -> tuple[Described, list[bytes]]:
    """Each tensor's description (its bytes at `offset`, `size` long) and its raw bytes."""
    described: Described = []
    raws: list[bytes] = []
    offset = 0
    for name, array in tensors.items():
        raw = to_raw(array)
        described.append(
            {
                "name": name,
                "datatype": Datatype.from_numpy(array.dtype).value,
                "shape": list(array.shape),
                "offset": offset,
                "size": len(raw),
            }
        )
        raws.append(raw)
        offset += len(raw)
    return described, raws


def put(tensors: Tensors) -> tuple[Described, SharedMemory]:
    """Copy tensors into one new shared-memory block: their descriptions and the block.

    No room is `Unavailable` (a 503), with nothing left behind."""
    described, raws = describe(tensors)
    return described, write(raws)


def write(raws: list[bytes]) -> SharedMemory:
    """A new block holding `raws` one after another (as `describe` laid them out)."""
    block = reserved_block(sum(len(raw) for raw in raws))
    assert block.buf is not None
    offset = 0
    for raw in raws:
        block.buf[offset : offset + len(raw)] = raw
        offset += len(raw)
    return block


def reserved_block(size: int) -> SharedMemory:
    """A new block of `size` bytes with its pages reserved."""
    try:
        block = SharedMemory(name=shm_name(), create=True, size=max(1, size))
    except OSError as exc:
        raise Unavailable(
            f"cannot make a shared-memory block of {size} bytes: {exc.strerror}"
        ) from None
    try:
        os.posix_fallocate(block._fd, 0, max(1, size))  # type: ignore[attr-defined]
    except OSError as exc:
        release(block)
        if exc.errno in (errno.ENOSPC, errno.ENOMEM):
            raise Unavailable(
                f"no room in shared memory (/dev/shm) for {size} bytes; give the server a "
                "larger /dev/shm (docker run --shm-size), or send smaller requests"
            ) from None
        raise Unavailable(f"cannot reserve shared memory: {exc.strerror}") from None
    return block


def release(block: SharedMemory) -> None:
    """Let go of a block this process made, and remove it."""
    block.close()
    with contextlib.suppress(FileNotFoundError):
        block.unlink()


def disown(block: SharedMemory) -> None:
    """Let go of a block this process made for another to read and remove."""
    resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
    block.close()


def unlink(name: str) -> None:
    """Remove a block by name, if it is still there (its reader went away)."""
    with contextlib.suppress(FileNotFoundError):
        block = SharedMemory(name=name)
        resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
        block.close()
        block.unlink()


def take(described: Described, name: str, *, unlink: bool) -> Tensors:
    """The tensors of the block `name` (copied out, so the block can go); with `unlink`,
    the block is removed after (the reader owns it)."""
    block = SharedMemory(name=name)
    try:
        # Python < 3.13 registers attachments with the resource tracker too: whoever
        # removes the block does so explicitly, never the tracker at exit.
        resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
        assert block.buf is not None
        return read(described, block.buf, copy=True)
    finally:
        block.close()
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                block.unlink()


def read(described: Described, data: bytes | memoryview, *, copy: bool = False) -> Tensors:
    """The tensors `describe` laid out in `data`; `copy` when `data` will not outlive them."""
    view = memoryview(data)
    out: Tensors = {}
    for item in described:
        start = int(item["offset"])
        chunk = view[start : start + int(item["size"])]
        array = from_raw(chunk, Datatype(item["datatype"]), item["shape"], name=item["name"])
        out[item["name"]] = array.copy() if copy and array.dtype != object else array
    return out


__all__ = [
    "Described",
    "describe",
    "disown",
    "put",
    "read",
    "release",
    "reserved_block",
    "take",
    "unlink",
    "write",
]
