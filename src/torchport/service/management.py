"""Management: registering packages as versions, promote, rollback, delete.

An upload is verified completely before anything is registered: sizes, names and hashes,
then the model is loaded and its bundled examples must reproduce their recorded outputs.
A refused package leaves the store exactly as it was.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from torchport.archive import Manifest
from torchport.errors import ModelLoadError, NotFound, TooLarge
from torchport.runtime import check_examples, open_runner
from torchport.settings import Limits
from torchport.store import ModelInfo, ModelStore, VersionInfo


@dataclass(frozen=True)
class UploadReport:
    version: VersionInfo
    manifest: Manifest
    load_seconds: float


class Management:
    """Changes to the model repository, each verified and audited."""

    def __init__(self, store: ModelStore, limits: Limits | None = None) -> None:
        self.store = store
        self.limits = limits or Limits()

    def upload(self, package: Path, *, promote: bool = False, actor: str = "local") -> UploadReport:
        """Verify `package` (hashes, load, examples) and register it as the next version."""
        with tempfile.TemporaryDirectory(prefix="torchport-upload-") as tmp:
            # What is verified is a private copy, and that same copy is what gets stored.
            private = Path(tmp) / "package.tpa"
            _copy_limited(package, private, self.limits.max_package_bytes)
            started = time.perf_counter()
            runner = open_runner(private, self.limits, warm_up=False)
            try:
                manifest = runner.manifest
                problems = check_examples(runner)
            finally:
                runner.close()
            if problems:
                raise ModelLoadError(
                    f"package '{manifest.name}' does not reproduce its own example: {problems[0]}"
                )
            load_seconds = time.perf_counter() - started
            info = self._register(private, manifest, promote=promote, actor=actor)
        return UploadReport(version=info, manifest=manifest, load_seconds=load_seconds)

    def _register(
        self, package: Path, manifest: Manifest, *, promote: bool, actor: str
    ) -> VersionInfo:
        return self.store.add_version(
            manifest.name,
            package,
            metadata={
                "signature": manifest.signature.model_dump(mode="json"),
                "model_kind": manifest.model.kind.value,
                "description": manifest.description,
                "created_at": manifest.created_at.isoformat(),
            },
            actor=actor,
            promote=promote,
        )

    def promote(self, name: str, version: int, *, actor: str = "local") -> ModelInfo:
        return self.store.promote(name, version, actor=actor)

    def rollback(self, name: str, *, actor: str = "local") -> ModelInfo:
        return self.store.rollback(name, actor=actor)

    def delete(self, name: str, version: int, *, actor: str = "local") -> None:
        self.store.delete_version(name, version, actor=actor)


def _copy_limited(src: Path, dest: Path, limit: int) -> None:
    try:
        size = src.stat().st_size
    except FileNotFoundError:
        raise NotFound(f"package {src} does not exist", field="package") from None
    if size > limit:
        raise TooLarge(
            f"package {src.name} is {size} bytes, over the limit of {limit} bytes "
            "(max_package_bytes)",
            field="package",
        )
    shutil.copyfile(src, dest)
