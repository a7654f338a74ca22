"""Content-addressed files on local disk: `blobs/sha256/ab/abcdef…`."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from torchport.archive import read_manifest
from torchport.errors import StoreError, TorchportError, out_of_space


class LocalBlobs:
    """Immutable files named by their sha256, written durably (fsync file, rename, fsync dir)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest

    def stage(self, source: Path) -> tuple[Path, str, int]:
        """Copy `source` into a private temporary file, fsynced; returns it with sha256 and size.

        Slow work (copy, hash) happens here, outside any lock; `publish` is then cheap.
        """
        try:
            with source.open("rb") as src:
                return self.stage_chunks(iter(lambda: src.read(1 << 20), b""))
        except OSError as exc:
            full = out_of_space(exc, self.root, source.stat().st_size)
            raise full or StoreError(
                f"cannot write to the store at {self.root}: {exc.strerror}"
            ) from None

    def stage_chunks(self, chunks: Iterable[bytes]) -> tuple[Path, str, int]:
        """`stage` for bytes that arrive in pieces (a download); the file is removed if
        they stop coming (the error is the caller's to name)."""
        fd, name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Path(name), digest.hexdigest(), size

    def publish(self, staged: Path, digest: str) -> Path:
        """Move a staged file to its address (atomic rename), or drop it if already there."""
        final = self.path(digest)
        if final.exists():
            staged.unlink(missing_ok=True)
            return final
        make_dirs(final.parent, self.root)
        os.chmod(staged, 0o444)
        staged.replace(final)
        _fsync_dir(final.parent)
        return final

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> set[str]:
        base = self.root / "sha256"
        return {p.name for p in base.glob("*/*")} if base.exists() else set()

    def sweep_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove staged files left by writers that died (old enough not to be in use)."""
        cutoff = time.time() - older_than_s
        removed = 0
        for part in self.tmp.glob("*.part"):
            try:
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


def make_dirs(path: Path, root: Path) -> None:
    """`path` and its missing parents below `root`, each new directory's entry fsynced in
    its parent: a power cut never loses a folder that a published file lives in."""
    missing = []
    while not path.exists() and path != root:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(folder.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune_weights(weights: Path, packages: Iterable[Path]) -> int:
    """Remove the shared weights files (`<store>/weights/<sha256>.…`, written by servers
    that map them) that no package in `packages` holds; how many. A file a process still
    maps stays readable to it until it unmaps it."""
    if not weights.is_dir():
        return 0
    used: set[str] = set()
    for package in packages:
        try:
            used.update(read_manifest(package).files.values())
        except TorchportError:
            continue  # a damaged blob is `verify`'s to report
    removed = 0
    for path in weights.iterdir():
        if path.name.split(".", 1)[0] not in used:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
