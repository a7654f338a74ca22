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
