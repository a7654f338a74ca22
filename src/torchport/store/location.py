"""Where a store lives: a local directory, or `s3://bucket/prefix` on object storage."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from torchport.errors import InvalidInput, StoreError
from torchport.store.base import ModelStore

# S3's rules for bucket names (3-63 characters, lower case, digits, dots and hyphens).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    """Every key of the store starts with this: empty, or ending in `/`."""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket):
            raise InvalidInput(
                f"store {url!r}: {bucket!r} is not an S3 bucket name (3-63 characters: "
                "lower-case letters, digits, dots, hyphens)",
                field="store",
            )
        prefix = prefix.strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise InvalidInput(
                f"store {url!r}: the prefix has an empty or relative part", field="store"
            )
        return cls(bucket, f"{prefix}/" if prefix else "")

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def is_remote(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith("s3://")


def default_cache_dir(location: S3Location) -> Path:
    """`$XDG_CACHE_HOME/torchport/s3/<bucket>-<hash of the prefix>`: one per store."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    tag = hashlib.sha256(location.prefix.encode()).hexdigest()[:12]
    return Path(base) / "torchport" / "s3" / f"{location.bucket}-{tag}"


def open_store(
    location: str | Path,
    *,
    s3_endpoint: str | None = None,
    cache_dir: Path | None = None,
) -> ModelStore:
    """The store at `location`: `s3://bucket/prefix` (an `S3Store`, with a local cache of
    verified packages in `cache_dir`) or a local directory (a `SQLiteStore`)."""
    if is_remote(location):
        s3 = S3Location.parse(str(location))
        try:
            from torchport.store.s3 import S3Store
        except ImportError as exc:
            raise StoreError(
                f"store {s3.url} is on object storage, which needs the S3 client: "
                f"pip install 'torchport[s3]' ({exc.name} is missing)"
            ) from None
        return S3Store(s3, cache_dir=cache_dir or default_cache_dir(s3), endpoint=s3_endpoint)
    if isinstance(location, str) and "://" in location:
        scheme = location.split("://", 1)[0]
        raise InvalidInput(
            f"store {location!r}: {scheme}:// is not a store; give a directory or s3://bucket/prefix",
            field="store",
        )
    from torchport.store.sqlite import SQLiteStore

    return SQLiteStore(Path(location).expanduser())
