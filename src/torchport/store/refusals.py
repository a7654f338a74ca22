"""The refusals every store backend gives, worded once: the same change is refused the same
way whether the store is a directory or a bucket."""

from __future__ import annotations

from torchport.errors import Conflict, NotFound


def model_not_found(name: str) -> NotFound:
    return NotFound(f"model '{name}' not found", field="model")


def version_not_found(name: str, version: int) -> NotFound:
    return NotFound(f"model '{name}' has no version {version}", field="version")


def no_default(name: str) -> NotFound:
    return NotFound(f"model '{name}' has no default version", field="version")


def no_previous(name: str) -> Conflict:
    return Conflict(f"model '{name}' has no previous version to roll back to")


def default_not_deleted(name: str, version: int) -> Conflict:
    return Conflict(
        f"version {version} is the default of model '{name}'; promote another version first",
        field="version",
    )


def rollout_running(name: str, candidate: int) -> Conflict:
    return Conflict(
        f"model '{name}' has a rollout running already (of version {candidate}): end it first",
        field="model",
    )


def candidate_is_default(name: str, candidate: int) -> Conflict:
    return Conflict(f"version {candidate} is the default of '{name}' already", field="candidate")


def no_rollout(name: str) -> NotFound:
    return NotFound(f"model '{name}' has no rollout running", field="model")


def model_exists(name: str, url: str) -> Conflict:
    return Conflict(f"model '{name}' is in {url} already", field="model")
