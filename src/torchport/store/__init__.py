"""The model repository: versions, aliases, audit log. Knows nothing of runtime or transports."""

from torchport.store.base import AuditEntry, ModelInfo, ModelStore, Rollout, VersionInfo
from torchport.store.sqlite import SQLiteStore

__all__ = [
    "AuditEntry",
    "ModelInfo",
    "ModelStore",
    "Rollout",
    "SQLiteStore",
    "VersionInfo",
]
