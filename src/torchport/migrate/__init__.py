"""Packages and settings from other servers, as torchport's own: TorchServe's `.mar` and
`config.properties`, SageMaker's PyTorch `model.tar.gz`."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from torchport.migrate.mar import Imported, import_mar
from torchport.migrate.sagemaker import import_sagemaker


def import_archive(archive: str | Path, out: str | Path | None = None, **options: Any) -> Imported:
    """A TorchServe `.mar` (a zip) or a SageMaker `model.tar.gz`, converted to a package
    (`accept` applies to SageMaker archives only)."""
    if zipfile.is_zipfile(archive):
        options.pop("accept", None)
        return import_mar(archive, out, **options)
    return import_sagemaker(archive, out, **options)


__all__ = ["Imported", "import_archive", "import_mar", "import_sagemaker"]
