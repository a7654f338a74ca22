"""The names a version carries from the server it came from (kept in its metadata)."""

from __future__ import annotations

from collections.abc import Mapping

from torchport.store import VersionInfo

TORCHSERVE_VERSION = "torchserve_version"
"""The archive's own version (`modelVersion`), which TorchServe's calls name it by."""
TORCHSERVE_URL = "torchserve_url"
"""The url it was registered from."""


def label(version: VersionInfo, key: str) -> str | None:
    labels = version.metadata.get("labels")
    if isinstance(labels, Mapping) and isinstance(labels.get(key), str):
        return str(labels[key])
    return None


def torchserve_name(version: VersionInfo) -> str:
    """What TorchServe's API calls the version: its archive's version, else its number."""
    return label(version, TORCHSERVE_VERSION) or str(version.version)
