"""A model as one JSON document: the unit an object store changes atomically.

`ModelDocument` holds one model's versions, aliases, configs, rollouts, recording settings
and recent audit entries, and applies each change of the `ModelStore` interface to itself
(the same rules and errors as `SQLiteStore`). The object store reads a document, applies a
change and writes it back only if nobody wrote it meanwhile; else it reads and applies
again, so every change is made against the state it is checked against.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from torchport.errors import StoreError
from torchport.store import refusals
from torchport.store.base import AuditEntry, ModelInfo, Rollout, VersionInfo

FORMAT = 1
AUDIT_KEPT = 256
"""Audit entries a document carries; older ones move to segment objects in batches."""
ROLLOUTS_KEPT = 64
"""Ended rollouts a document keeps (with every running one)."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ModelDocument:
    """One model's state (a JSON object), changed in place by the methods below."""

    def __init__(self, data: dict[str, Any]) -> None:
        if data.get("format") != FORMAT:
            raise StoreError(
                f"model document of {data.get('name')!r} has format {data.get('format')}; "
                f"this torchport reads format {FORMAT}"
            )
        self.data = data

    @classmethod
    def new(cls, name: str) -> ModelDocument:
        return cls(
            {
                "format": FORMAT,
                "name": name,
                "created_at": now(),
                "next_version": 1,
                "default": None,
                "previous": None,
                "versions": [],
                "rollouts": [],
                "next_rollout": 1,
                "recording": None,
                "audit": [],
                "next_audit": 1,
                "audit_segments": [],
            }
        )

    @classmethod
    def parse(cls, raw: bytes, where: str) -> ModelDocument:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"{where} is not a model document: {exc}") from None
        if not isinstance(data, dict):
            raise StoreError(f"{where} is not a model document")
        return cls(data)

    def dump(self) -> bytes:
        return json.dumps(self.data, separators=(",", ":")).encode()

    def copy(self) -> ModelDocument:
        return ModelDocument(copy.deepcopy(self.data))

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def live(self) -> bool:
        """Whether the model exists (a document whose versions were all deleted stays, so
        that their numbers are never given out again)."""
        return bool(self.data["versions"])

    # -- reads -----------------------------------------------------------------------------

    def info(self) -> ModelInfo:
        self.check_live()
        d = self.data
        return ModelInfo(
            name=self.name,
            default=d["default"],
            previous=d["previous"],
            versions=[self._version_info(v) for v in d["versions"]],
            created_at=d["created_at"],
        )

    def version(self, version: int | None) -> VersionInfo:
        self.check_live()
        if version is None:
            version = self.data["default"]
            if version is None:
                raise refusals.no_default(self.name)
        return self._version_info(self._version_row(version))

    def rollouts(self) -> list[Rollout]:
        return [self._rollout(r) for r in self.data["rollouts"]]

    def recent_audit(self) -> list[AuditEntry]:
        """Oldest first."""
        return [self.audit_entry(e) for e in self.data["audit"]]

    def audit_entry(self, e: dict[str, Any]) -> AuditEntry:
        return AuditEntry(
            id=e["id"],
            at=e["at"],
            actor=e["actor"],
            action=e["action"],
            model=self.name,
            version=e["version"],
            detail=e["detail"],
        )

    def digests(self) -> set[str]:
        return {v["digest"] for v in self.data["versions"]}

    # -- changes ---------------------------------------------------------------------------

    def add_version(
        self,
        digest: str,
        size: int,
        metadata: dict[str, Any],
        actor: str,
        promote: bool,
    ) -> int:
        d = self.data
        version = int(d["next_version"])
        at = now()
        d["versions"].append(
            {
                "version": version,
                "digest": digest,
                "size": size,
                "created_at": at,
                "metadata": metadata,
                "config": {},
            }
        )
        d["next_version"] = version + 1
        self.audit(actor, "upload", version, {"digest": digest, "size": size})
        if d["default"] is None:
            d["default"] = version
        elif promote:
            self.set_default(version, actor)
        return version

    def promote(self, version: int, actor: str) -> None:
        self.check_live()
        self._version_row(version)
        self.set_default(version, actor)

    def set_default(self, version: int, actor: str) -> None:
        d = self.data
        current = d["default"]
        if current == version:
            return
        d["default"], d["previous"] = version, current
        self.audit(actor, "promote", version, {"from": current})

    def rollback(self, actor: str) -> None:
        self.check_live()
        d = self.data
        previous, current = d["previous"], d["default"]
        if previous is None:
            raise refusals.no_previous(self.name)
        d["default"], d["previous"] = previous, current
        self.audit(actor, "rollback", previous, {"from": current})

    def delete_version(self, version: int, actor: str) -> str:
        """Remove a version; returns its digest."""
        self.check_live()
        d = self.data
        row = self._version_row(version)
        last = len(d["versions"]) == 1
        if d["default"] == version and not last:
            raise refusals.default_not_deleted(self.name, version)
        d["versions"] = [v for v in d["versions"] if v["version"] != version]
        if last:
            d["default"] = d["previous"] = None
        elif d["previous"] == version:
            d["previous"] = None
        detail = {"digest": row["digest"], **({"model_removed": True} if last else {})}
        self.audit(actor, "delete", version, detail)
        return str(row["digest"])

    def set_config(self, version: int, config: dict[str, Any], actor: str) -> None:
        self.check_live()
        self._version_row(version)["config"] = config
        self.audit(actor, "config", version, config)

    def start_rollout(
        self,
        *,
        candidate: int,
        mode: str,
        share: float,
        sticky_header: str | None,
        rules: dict[str, Any],
        actor: str,
    ) -> Rollout:
        self.check_live()
        d = self.data
        self._version_row(candidate)
        running = [r for r in d["rollouts"] if r["state"] == "running"]
        if running:
            raise refusals.rollout_running(self.name, running[0]["candidate"])
        baseline = d["default"]
        if baseline == candidate:
            raise refusals.candidate_is_default(self.name, candidate)
        row = {
            "id": d["next_rollout"],
            "candidate": candidate,
            "baseline": baseline,
            "mode": mode,
            "share": share,
            "sticky_header": sticky_header,
            "rules": rules,
            "state": "running",
            "started_at": now(),
            "ended_at": None,
            "decision": {},
        }
        d["next_rollout"] += 1
        d["rollouts"].append(row)
        ended = [r for r in d["rollouts"] if r["state"] != "running"]
        if len(ended) > ROLLOUTS_KEPT:
            drop = {id(r) for r in ended[: len(ended) - ROLLOUTS_KEPT]}
            d["rollouts"] = [r for r in d["rollouts"] if id(r) not in drop]
        detail = {"mode": mode, "share": share, "baseline": baseline, "rules": rules}
        self.audit(actor, "rollout_start", candidate, detail)
        return self._rollout(row)

    def end_rollout(self, state: str, decision: dict[str, Any], actor: str) -> Rollout:
        running = [r for r in self.data["rollouts"] if r["state"] == "running"]
        if not running:
            raise refusals.no_rollout(self.name)
        row = running[0]
        row.update(state=state, ended_at=now(), decision=decision)
        self.audit(actor, f"rollout_{state}", row["candidate"], decision)
        return self._rollout(row)

    def set_recording(self, config: dict[str, Any] | None, actor: str) -> None:
        self.check_live()
        self.data["recording"] = config
        if config is None:
            self.audit(actor, "recording_stop", None, {})
        else:
            self.audit(actor, "recording_start", None, config)

    def audit(self, actor: str, action: str, version: int | None, detail: dict[str, Any]) -> None:
        d = self.data
        d["audit"].append(
            {
                "id": d["next_audit"],
                "at": now(),
                "actor": actor,
                "action": action,
                "version": version,
                "detail": detail,
            }
        )
        d["next_audit"] += 1

    def overflow(self) -> list[dict[str, Any]] | None:
        """The oldest audit entries to move out to a segment, once the document holds more
        than `AUDIT_KEPT` (half of them at a time); None while it does not."""
        entries = self.data["audit"]
        if len(entries) <= AUDIT_KEPT:
            return None
        return list(entries[: AUDIT_KEPT // 2])

    def moved_out(self, segment: list[dict[str, Any]]) -> None:
        """The entries of `segment` are stored in their own object now."""
        first, last = segment[0]["id"], segment[-1]["id"]
        self.data["audit"] = [e for e in self.data["audit"] if e["id"] > last]
        self.data["audit_segments"].append([first, last])

    # -- helpers ---------------------------------------------------------------------------

    def check_live(self) -> None:
        if not self.live:  # never registered, or its last version deleted
            raise refusals.model_not_found(self.name)

    def _version_row(self, version: int) -> dict[str, Any]:
        for row in self.data["versions"]:
            if row["version"] == version:
                return row  # type: ignore[no-any-return]
        raise refusals.version_not_found(self.name, version)

    def _version_info(self, row: dict[str, Any]) -> VersionInfo:
        return VersionInfo(model=self.name, **copy.deepcopy(row))

    def _rollout(self, row: dict[str, Any]) -> Rollout:
        return Rollout(model=self.name, **copy.deepcopy(row))


def rollout_row(rollout: Rollout, id: int) -> dict[str, Any]:
    """A rollout as a document keeps it (under a new id)."""
    row = {k: v for k, v in asdict(rollout).items() if k != "model"}
    return {**row, "id": id}


def version_row(info: VersionInfo) -> dict[str, Any]:
    """A version as a document keeps it."""
    return {k: v for k, v in asdict(info).items() if k != "model"}
