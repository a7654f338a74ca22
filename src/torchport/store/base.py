"""The model repository interface, and the plain records it returns.

The embedded default is `SQLiteStore` (SQLite in WAL mode plus content-addressed blobs on
local disk); an object-store backend implements the same `ModelStore` interface.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class VersionInfo:
    model: str
    version: int
    digest: str
    """sha256 of the package file: the blob's address."""
    size: int
    created_at: str
    metadata: dict[str, Any] = field(default_factory=dict)
    """What the registrar recorded (e.g. the manifest's signature); opaque to the store."""
    config: dict[str, Any] = field(default_factory=dict)
    """Per-version serving overrides (workers, batching)."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    default: int | None
    previous: int | None
    versions: list[VersionInfo]
    created_at: str


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str
    actor: str
    action: str
    model: str
    version: int | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class Rollout:
    """A candidate version proving itself on a model's traffic (see `service/rollouts.py`)."""

    model: str
    id: int
    candidate: int
    baseline: int
    """The default when it started: what the candidate is compared with."""
    mode: str
    """`canary` (a share of requests answered by the candidate) or `shadow` (a share also
    sent to it, its answers compared and never returned)."""
    share: float
    sticky_header: str | None
    rules: dict[str, Any]
    state: str
    """`running`, or how it ended: `promoted`, `rolled_back`, `stopped`."""
    started_at: str
    ended_at: str | None = None
    decision: dict[str, Any] = field(default_factory=dict)
    """Why it ended, with the figures behind it."""


@dataclass(frozen=True)
class ModelHistory:
    """Everything a store holds of one model, as `torchport store copy` moves it."""

    info: ModelInfo
    next_version: int
    """The number its next upload gets (deleted versions' numbers are never reused)."""
    audit: list[AuditEntry]
    """Oldest first."""
    rollouts: list[Rollout]
    """Oldest first."""
    recording: dict[str, Any] | None


class ModelStore(abc.ABC):
    """Models, their numbered versions, the `default` and `previous` aliases, an audit log.

    Every change is atomic: a version is either fully registered (blob durable on disk,
    row committed) or absent. Methods raise `NotFound`, `Conflict` or `StoreError`.
    """

    root: Path
    """A local directory of the store's own (the token file, recorded traffic; a cache
    for a remote store)."""

    url: str
    """Where the store is, as a user names it (a directory, or `s3://bucket/prefix`)."""

    @abc.abstractmethod
    def add_version(
        self,
        name: str,
        package: Path,
        *,
        metadata: dict[str, Any] | None = None,
        actor: str = "local",
        promote: bool = False,
    ) -> VersionInfo:
        """Register the file `package` as the next version of `name` (1, 2, 3 …).

        A model's first version becomes its default; later ones only with `promote`.
        """

    @abc.abstractmethod
    def list_models(self) -> list[ModelInfo]: ...

    @abc.abstractmethod
    def get_model(self, name: str) -> ModelInfo: ...

    @abc.abstractmethod
    def get_version(self, name: str, version: int | None = None) -> VersionInfo:
        """A version, or the model's `default` when `version` is None."""

    @abc.abstractmethod
    def package_path(self, info: VersionInfo) -> Path:
        """A local path to the version's package file (read-only; do not modify)."""

    @abc.abstractmethod
    def promote(self, name: str, version: int, *, actor: str = "local") -> ModelInfo:
        """Point `default` at `version`; the old default becomes `previous`."""

    @abc.abstractmethod
    def rollback(self, name: str, *, actor: str = "local") -> ModelInfo:
        """Swap `default` and `previous`; `Conflict` when there is no previous version."""

    @abc.abstractmethod
    def delete_version(self, name: str, version: int, *, actor: str = "local") -> None:
        """Remove a version; `Conflict` while it is the default of other versions. Deleting
        a model's last version removes the model (its numbers are still never reused)."""

    @abc.abstractmethod
    def set_config(
        self, name: str, version: int, config: dict[str, Any], *, actor: str = "local"
    ) -> VersionInfo: ...

    @abc.abstractmethod
    def start_rollout(
        self,
        name: str,
        *,
        candidate: int,
        mode: str,
        share: float,
        sticky_header: str | None,
        rules: dict[str, Any],
        actor: str = "local",
    ) -> Rollout:
        """Record a running rollout; `Conflict` if the model has one already."""

    @abc.abstractmethod
    def end_rollout(
        self, name: str, state: str, decision: dict[str, Any], *, actor: str = "local"
    ) -> Rollout:
        """End the model's running rollout (`NotFound` if none) as `state`, with why."""

    @abc.abstractmethod
    def rollouts(self, name: str | None = None, *, running: bool = False) -> list[Rollout]:
        """Rollouts, newest first: of one model or all; only running ones if asked."""

    @abc.abstractmethod
    def set_recording(
        self, name: str, config: dict[str, Any] | None, *, actor: str = "local"
    ) -> None:
        """Record a sample of the model's traffic as `config` says, or stop (None)."""

    @abc.abstractmethod
    def recordings(self) -> dict[str, dict[str, Any]]:
        """The recording settings of every model that records its traffic."""

    @abc.abstractmethod
    def audit(self, name: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The most recent changes first."""

    @abc.abstractmethod
    def history(self, name: str) -> ModelHistory:
        """Everything of one model: versions, aliases, configs, audit, rollouts."""

    @abc.abstractmethod
    def restore(self, history: ModelHistory, package: Callable[[VersionInfo], Path]) -> None:
        """Register a model as `history` says, with the same version numbers, aliases and
        audit, reading each version's package from `package(version)`; `Conflict` if this
        store has the model already. All of it or nothing is registered."""

    @abc.abstractmethod
    def gc(self) -> int:
        """Remove package files no version names (left by a crash or a delete); how many."""

    @abc.abstractmethod
    def verify(self) -> list[str]:
        """Check every registered blob exists and hashes right; one line per problem."""

    @abc.abstractmethod
    def close(self) -> None: ...
