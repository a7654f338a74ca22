"""Weights as memory-mapped, shared pages: one copy of each weights file per machine.

safetensors maps a file's tensors straight from the page cache (a private, copy-on-write
mapping). A model whose parameters *are* those tensors (`load_state_dict(assign=True)`)
holds no copy of its own: every process and every version that maps the same file shares
its pages, and unloading a model gives them back at once (no heap to fragment).

Sharing needs the same file, not equal bytes in two files: a server keeps each weights file
once, named by its sha256 (verified with the package), in a directory of its store.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import safetensors.torch
import torch
from safetensors import SafetensorError

log = logging.getLogger("torchport.runtime")


ALIGN = 64
"""Where every tensor of a shared weights file starts (a cache line: the alignment torch's
own allocations have, so kernels take the same paths, and give the same bits, as with
weights copied into fresh memory)."""
PAD = "__torchport_pad_"


def shared_file(path: Path, digest: str, directory: Path | None) -> Path:
    """The file to map `path` (a safetensors file, already verified as `digest`) from: its
    one copy in `directory`, made on first use (atomically, read-only) with every tensor
    aligned to `ALIGN`, or `path` itself without one."""
    if directory is None:
        return path
    target = directory / f"{digest}{path.suffix}"
    if target.exists():
        return target
    staged = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, suffix=".part")
        staged = Path(name)
        with os.fdopen(fd, "wb") as out:
            _write_aligned(safetensors.torch.load_file(str(path)), out)
        os.chmod(staged, 0o444)
        os.replace(staged, target)  # the same bytes from another process: either wins
    except (OSError, SafetensorError, KeyError) as exc:  # KeyError: a dtype not listed
        if staged is not None:
            staged.unlink(missing_ok=True)
        log.warning("weights not shared (%s): mapped from the unpacked package", exc)
        return path
    return target


def _write_aligned(tensors: dict[str, torch.Tensor], out: BinaryIO) -> None:
    """A safetensors file whose tensors each start at a multiple of `ALIGN` (the format
    wants no gaps, so gaps are filled by small padding tensors, dropped at load)."""
    header: dict[str, Any] = {}
    order: list[tuple[int, torch.Tensor | int]] = []  # (offset, tensor or pad length)
    offset = 0
    for index, (name, tensor) in enumerate(sorted(tensors.items())):
        gap = -offset % ALIGN
        if gap:
            header[f"{PAD}{index}"] = {
                "dtype": "U8",
                "shape": [gap],
                "data_offsets": [offset, offset + gap],
            }
            order.append((offset, gap))
            offset += gap
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        order.append((offset, tensor))
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGN)  # the data starts aligned too
    out.write(len(raw).to_bytes(8, "little"))
    out.write(raw)
    for _, item in order:
        if isinstance(item, int):
            out.write(bytes(item))
        else:
            out.write(item.contiguous().view(torch.uint8).numpy().tobytes())


def loaded_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's tensors of a weights file (padding of a shared file dropped)."""
    return {k: v for k, v in tensors.items() if not k.startswith(PAD)}


def assign_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state` into `model` strictly; the tensors become the parameters themselves
    (no copy) when every one has the dtype and shape the model declares and starts
    aligned (a shared weights file's do), else they are copied."""
    current = model.state_dict()
    same = current.keys() == state.keys() and all(
        current[k].dtype == v.dtype and current[k].shape == v.shape and v.data_ptr() % ALIGN == 0
        for k, v in state.items()
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


_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
