"""Weights as memory-mapped, shared pages: one copy of each weights file per machine.

safetensors maps a file's tensors straight from the page cache (a private, copy-on-write
mapping). A model whose parameters *are* those tensors (`load_state_dict(assign=True)`)
holds no copy of its own: every process and every version that maps the same file shares
its pages, and unloading a model gives them back at once (no heap to fragment).

Sharing needs the same file, not equal bytes in two files: a server keeps each weights file
once, named by its sha256 (verified with the package), in a directory of its store.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("torchport.runtime")


def shared_file(path: Path, digest: str, directory: Path | None) -> Path:
    """The file to map `path` (already verified as `digest`) from: its one copy in
    `directory`, made on first use (atomically, read-only), or `path` itself without one."""
    if directory is None:
        return path
    target = directory / f"{digest}{path.suffix}"
    if target.exists():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, staged = tempfile.mkstemp(dir=directory, suffix=".part")
        with os.fdopen(fd, "wb") as out, path.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        os.chmod(staged, 0o444)
        os.replace(staged, target)  # the same bytes from another process: either wins
    except OSError as exc:
        with contextlib.suppress(UnboundLocalError, OSError):
            Path(staged).unlink()
        log.warning("weights not shared (%s): mapped from the unpacked package", exc)
        return path
    return target


def assign_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state` into `model` strictly; the tensors become the parameters themselves
    (no copy) when every one has the dtype and shape the model declares, else copied."""
    current = model.state_dict()
    same = current.keys() == state.keys() and all(
        current[k].dtype == v.dtype and current[k].shape == v.shape for k, v in state.items()
    )
    model.load_state_dict(state, strict=True, assign=same)


def resident_bytes(model: Any) -> int | None:
    """Bytes of the model's tensors (each storage once), None for a model that is not a
    torch module (AOTInductor, ONNX Runtime)."""
    if not isinstance(model, torch.nn.Module):
        return None
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


_libc: Any = None


def give_back_memory() -> None:
    """Return freed heap pages to the system (glibc keeps them for reuse otherwise, so an
    unloaded model's memory would stay in the process's RSS)."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
    trim = getattr(_libc, "malloc_trim", None) if _libc else None
    if trim is not None:
        trim(0)
