"""The model repository: versions, aliases, audit log. Knows nothing of runtime or transports.

`open_store` opens a local directory (`SQLiteStore`) or `s3://bucket/prefix` (`S3Store`,
in `store/s3.py`, imported only then: it needs the `s3` extra).
"""

from torchport.store.base import (
    AuditEntry,
    ModelHistory,
    ModelInfo,
    ModelStore,
    Rollout,
    VersionInfo,
)
from torchport.store.location import S3Location, is_remote, open_store
from torchport.store.sqlite import SQLiteStore

__all__ = [
    "AuditEntry",
    "ModelHistory",
    "ModelInfo",
    "ModelStore",
    "Rollout",
    "S3Location",
    "SQLiteStore",
    "VersionInfo",
    "is_remote",
    "open_store",
]
