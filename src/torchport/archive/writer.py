"""Writing a package: files plus a manifest that names each file's sha256."""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

from torchport.archive.hashing import sha256_file
from torchport.archive.manifest import MANIFEST_NAME, Manifest, parse_manifest
from torchport.archive.paths import check_member_name
from torchport.errors import PackageError

# Weights and compiled programs barely compress; storing them keeps packing and loading fast.
_STORED_SUFFIXES = {".safetensors", ".pt2", ".pt", ".onnx", ".so", ".bin"}
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def write_package(out: Path, manifest: Manifest, files: Mapping[str, Path]) -> Manifest:
    """Write `files` (member name → source path) and `manifest` to the zip `out`, atomically.

    The manifest's `files` digests are computed here; whatever it held is replaced. The
    result is re-parsed, so an invalid manifest never reaches disk. Returns the manifest
    as written.
    """
    for name in files:
        check_member_name(name)
        if name == MANIFEST_NAME:
            raise PackageError(f"'{MANIFEST_NAME}' is reserved for the manifest")
    digests = {name: sha256_file(src) for name, src in sorted(files.items())}
    final = manifest.model_copy(update={"files": digests})
    parse_manifest(final.to_json().encode())  # the same checks a reader applies

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as zf:
            _add(zf, MANIFEST_NAME, final.to_json().encode())
            for name, src in sorted(files.items()):
                info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
                info.compress_type = _compression(name)
                info.external_attr = 0o644 << 16
                with src.open("rb") as fin, zf.open(info, "w", force_zip64=True) as fout:
                    while chunk := fin.read(1 << 20):
                        fout.write(chunk)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def _compression(name: str) -> int:
    return zipfile.ZIP_STORED if Path(name).suffix in _STORED_SUFFIXES else zipfile.ZIP_DEFLATED
