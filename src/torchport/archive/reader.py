"""Reading a package: every size limit, name and hash is checked before anything is used."""

from __future__ import annotations

import hashlib
import stat
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from torchport.archive.manifest import MANIFEST_NAME, Manifest, parse_manifest
from torchport.archive.paths import check_member_name
from torchport.archive.signing import SIGNATURE_NAME
from torchport.errors import (
    IntegrityError,
    NotFound,
    PackageError,
    TooLarge,
    UnsafeContent,
    out_of_space,
)
from torchport.settings import Limits

_MANIFEST_MAX = 16 * 1024 * 1024
_ENCRYPTED = 0x1
# What reading a damaged member raises: zipfile's own checks, a cut file, or deflate data
# that does not inflate (zlib's error is none of the others).
_UNREADABLE = (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error)
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


@dataclass(frozen=True)
class Package:
    """A verified package on disk: its manifest and, after `unpack`, its files."""

    path: Path
    manifest: Manifest


def read_package(path: Path, limits: Limits | None = None) -> Package:
    """Open and fully verify the package at `path` (sizes, names, manifest, every hash)."""
    with _open(path, limits or Limits()) as (zf, manifest):
        for name, want in manifest.files.items():
            with zf.open(name) as member:
                _verify(name, _hash_copy(name, member, None), want)
    return Package(path=path, manifest=manifest)


def read_manifest(path: Path, limits: Limits | None = None) -> Manifest:
    """The manifest of the package at `path`, its structure checked (its files' hashes
    are not: `read_package` checks those)."""
    with _open(path, limits or Limits()) as (_zf, manifest):
        return manifest


def unpack_package(path: Path, dest: Path, limits: Limits | None = None) -> Package:
    """Verify the package at `path` and write its files under `dest` (created, must be empty).

    Hashes are checked as the files are written, in one pass; on any failure `dest` is
    left with no verified content and the error says which file failed.
    """
    with _open(path, limits or Limits()) as (zf, manifest):
        try:
            dest.mkdir(parents=True, exist_ok=True)
            if any(dest.iterdir()):
                raise PackageError(f"cannot unpack into {dest}: directory is not empty")
            for name, want in manifest.files.items():
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as member, target.open("wb") as out:
                    got = _hash_copy(name, member, out)
                if got != want:
                    target.unlink()
                    _verify(name, got, want)
        except OSError as exc:  # writing, not reading: the package is not at fault
            unpacked = sum(i.file_size for i in zf.infolist())
            raise out_of_space(exc, dest, unpacked) or PackageError(
                f"cannot unpack into {dest}: {exc.strerror}"
            ) from None
    return Package(path=path, manifest=manifest)


@contextmanager
def _open(path: Path, limits: Limits) -> Iterator[tuple[zipfile.ZipFile, Manifest]]:
    """A zip whose size, member list and manifest passed every check."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise NotFound(f"package {path} does not exist", field="package") from None
    except OSError as exc:
        raise PackageError(f"cannot read package {path}: {exc.strerror}") from None
    if not path.is_file():
        raise PackageError(f"package {path} is not a file")
    if size > limits.max_package_bytes:
        raise TooLarge(
            f"package {path.name} is {size} bytes, over the limit of "
            f"{limits.max_package_bytes} bytes (max_package_bytes)"
        )
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise PackageError(
            f"{path.name} is not a torchport package: not a zip file, or truncated ({exc})"
        ) from None
    with zf:
        yield zf, _check(zf, path, limits)


def _check(zf: zipfile.ZipFile, path: Path, limits: Limits) -> Manifest:
    infos = zf.infolist()
    if len(infos) > limits.max_package_files + 1:
        raise TooLarge(f"package {path.name} holds {len(infos)} files, over the limit")
    seen: set[str] = set()
    folders: set[str] = set()
    total = 0
    for info in infos:
        check_member_name(info.filename)
        mode = info.external_attr >> 16
        if info.is_dir() or stat.S_ISLNK(mode):
            raise UnsafeContent(f"package member '{info.filename}' is a directory or a link")
        if info.filename in seen:
            raise UnsafeContent(f"package member '{info.filename}' appears twice")
        if info.flag_bits & _ENCRYPTED:
            raise UnsafeContent(f"package member '{info.filename}' is encrypted")
        if info.compress_type not in _METHODS:
            raise PackageError(
                f"package member '{info.filename}' uses zip compression method "
                f"{info.compress_type}; torchport reads stored or deflated members"
            )
        seen.add(info.filename)
        parts = info.filename.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        total += info.file_size
    for name in sorted(seen & folders):
        raise UnsafeContent(f"package member '{name}' is both a file and a folder")
    if total > limits.max_unpacked_bytes:
        raise TooLarge(
            f"package {path.name} unpacks to {total} bytes, over the limit of "
            f"{limits.max_unpacked_bytes} bytes (max_unpacked_bytes)"
        )
    if MANIFEST_NAME not in seen:
        raise PackageError(f"{path.name} is not a torchport package: no {MANIFEST_NAME}")
    if zf.getinfo(MANIFEST_NAME).file_size > _MANIFEST_MAX:
        raise TooLarge(f"{MANIFEST_NAME} is over {_MANIFEST_MAX} bytes")
    try:
        manifest = parse_manifest(zf.read(MANIFEST_NAME))
    except _UNREADABLE as exc:
        raise PackageError(f"{path.name}: {MANIFEST_NAME} is unreadable ({exc})") from None
    members = seen - {MANIFEST_NAME, SIGNATURE_NAME}  # the signature covers the manifest
    listed = set(manifest.files)
    for name in sorted(listed - members):
        raise IntegrityError(f"file '{name}' is in the manifest but missing from the package")
    for name in sorted(members - listed):
        raise IntegrityError(f"file '{name}' is in the package but not in its manifest")
    return manifest


def _hash_copy(name: str, member: IO[bytes], out: IO[bytes] | None) -> str:
    digest = hashlib.sha256()
    while True:
        try:
            chunk = member.read(1 << 20)
        except _UNREADABLE as exc:
            # zipfile checks each member's CRC and length: a changed or cut file fails here.
            raise IntegrityError(f"file '{name}' is corrupt or truncated ({exc})") from None
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)
        if out is not None:
            out.write(chunk)  # an OSError here is the disk's, not the package's


def _verify(name: str, got: str, want: str) -> None:
    if got != want:
        raise IntegrityError(
            f"file '{name}' was changed after packaging: sha256 {got[:12]}… does not match "
            f"the manifest's {want[:12]}…",
            field=name,
        )
