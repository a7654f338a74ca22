"""The package format (`.tpa`): write, read, verify. Knows nothing above it."""

from torchport.archive.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Example,
    ExportInfo,
    HandlerEntry,
    Manifest,
    ModelEntry,
    ModelKind,
    OutputParity,
    Parity,
    RuntimeDefaults,
    check_model_name,
    parse_manifest,
)
from torchport.archive.reader import Package, read_manifest, read_package, unpack_package
from torchport.archive.writer import write_package

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Example",
    "ExportInfo",
    "HandlerEntry",
    "Manifest",
    "ModelEntry",
    "ModelKind",
    "OutputParity",
    "Package",
    "Parity",
    "RuntimeDefaults",
    "check_model_name",
    "parse_manifest",
    "read_manifest",
    "read_package",
    "unpack_package",
    "write_package",
]
