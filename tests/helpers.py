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
