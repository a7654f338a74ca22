"""Test helpers: packages rewritten the ways an attacker or a broken disk would."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def write_zip(path: Path, files: dict[str, bytes], *, symlinks: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            if name in symlinks:
                info.external_attr = (0o120777) << 16
            zf.writestr(info, data)
    return path


def rewrite(src: Path, dest: Path, change: Callable[[dict[str, bytes]], dict[str, bytes]]) -> Path:
    return write_zip(dest, change(members(src)))


def edit_manifest(
    src: Path, dest: Path, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> Path:
    def apply(files: dict[str, bytes]) -> dict[str, bytes]:
        manifest = json.loads(files["MANIFEST.json"])
        files["MANIFEST.json"] = json.dumps(change(manifest)).encode()
        return files

    return rewrite(src, dest, apply)


IDENTITY_MODEL = """
import torch

def build() -> torch.nn.Module:
    return torch.nn.Identity()
"""


def handler_package(work: Path, name: str, handler: str, **options: Any) -> Path:
    """A package of an identity model whose behaviour is all in `handler` (its source),
    written under `work`; `options` go to `torchport.package` (example, runtime, …)."""
    import torchport

    (work / "model.py").write_text(IDENTITY_MODEL)
    (work / "handler.py").write_text(handler)
    out = work / f"{name}.tpa"
    torchport.package(
        name=name, code=f"{work / 'model.py'}:build", handler=work / "handler.py", out=out,
        **options,
    )  # fmt: skip
    return out


SCALED_MODEL = """
import torch


class Scaled(torch.nn.Module):
    # Multiplies its input by its first weight; the rest only take memory, but are read
    # on every call (as a real model's are), so they are in memory while it is loaded.
    def __init__(self, floats: int = 1) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(floats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[0] + 0.0 * self.weight[1:].sum()


def build() -> torch.nn.Module:
    return Scaled(FLOATS)
"""


def scaled_packages(work: Path, count: int, floats: int, **runtime: Any) -> list[Path]:
    """`count` packages `s00`, `s01`, … of a model whose answer is its input times i + 1,
    each with `floats` float32 weights of its own (distinct bytes: no two share pages)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    import torchport

    work.mkdir(parents=True, exist_ok=True)
    (work / "model.py").write_text(SCALED_MODEL.replace("FLOATS", str(floats)))
    out = []
    for i in range(count):
        weights = torch.full((floats,), float(i + 1))
        weights[1:] += torch.arange(floats - 1, dtype=torch.float32) * 1e-6 * (i + 1)
        save_file({"weight": weights}, work / f"s{i:02d}.safetensors")
        path = work / f"s{i:02d}.tpa"
        torchport.package(
            name=f"s{i:02d}",
            code=f"{work / 'model.py'}:build",
            weights=work / f"s{i:02d}.safetensors",
            example={"x": np.ones((1, 4), dtype=np.float32)},
            runtime=runtime or None,
            out=path,
        )
        (work / f"s{i:02d}.safetensors").unlink()
        out.append(path)
    return out
