"""The embedded default store: SQLite (WAL) for records, `LocalBlobs` for package files.

Layout of a store directory::

    store.db          models, versions, aliases, audit log
    blobs/sha256/…    package files, named by their sha256
    blobs/tmp/        files being written

Writers take SQLite's write lock (`BEGIN IMMEDIATE`) around every change, and blobs are
published or removed only while holding it, so two processes writing at once are
serialized and a crash at any point leaves either the old state or the new one: a blob
with no row (swept by `gc`), never a row with no blob.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torchport.archive import check_model_name
from torchport.archive.hashing import sha256_file
from torchport.errors import InsufficientStorage, StoreError, TorchportError
from torchport.store import refusals
from torchport.store.base import (
    AuditEntry,
    ModelHistory,
    ModelInfo,
    ModelStore,
    Rollout,
    VersionInfo,
)
from torchport.store.blobs import LocalBlobs, prune_weights

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    default_version INTEGER,
    previous_version INTEGER,
    next_version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL REFERENCES models(name),
    version INTEGER NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    config TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (model, version)
);
CREATE INDEX IF NOT EXISTS versions_digest ON versions(digest);
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    candidate INTEGER NOT NULL,
    baseline INTEGER NOT NULL,
    mode TEXT NOT NULL,
    share REAL NOT NULL,
    sticky_header TEXT,
    rules TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    decision TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_running ON rollouts(model) WHERE state = 'running';
CREATE TABLE IF NOT EXISTS recordings (
    model TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER,
    detail TEXT NOT NULL DEFAULT '{}'
);
"""


def _private(root: Path) -> None:
    """Packages hold code and weights, and the token file lives here: only the owner may
    look in (group and other bits are taken off a store this user owns)."""
    mode = root.stat()
    if mode.st_uid == os.getuid() and mode.st_mode & 0o077:
        root.chmod(mode.st_mode & 0o700)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class SQLiteStore(ModelStore):
    """A store in one local directory; safe for many threads and processes at once."""

    def __init__(self, root: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            _private(self.root)
            self.blobs = LocalBlobs(self.root / "blobs")
            self._db = sqlite3.connect(
                self.root / "store.db",
                timeout=busy_timeout_s,
                isolation_level=None,  # explicit BEGIN/COMMIT only
                check_same_thread=False,
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._lock = threading.RLock()
            with self._write():
                found = self._db.execute("PRAGMA user_version").fetchone()[0]
                if found not in (0, SCHEMA_VERSION):
                    raise StoreError(
                        f"store {self.root} has schema version {found}; "
                        f"this torchport reads version {SCHEMA_VERSION}"
                    )
                # executescript would commit early; run the statements inside this transaction.
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store at {self.root}: {exc}") from None
        except OSError as exc:
            raise StoreError(f"cannot open the store at {self.root}: {exc.strerror}") from None
        self.blobs.sweep_tmp()

    # -- transactions ------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's write lock (all processes)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"store {self.root} is busy: {exc}") from None
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                with suppress(sqlite3.Error):  # a failed COMMIT may have rolled back already
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._failed(exc) from None
                raise

    def _failed(self, exc: sqlite3.Error) -> TorchportError:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return InsufficientStorage(
                f"no space left on the disk of the store at {self.root} "
                f"({shutil.disk_usage(self.root).free:,} bytes free): nothing was changed"
            )
        return StoreError(f"the store at {self.root} failed a write: {exc}")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    # -- writes --------------------------------------------------------------------------

    def add_version(
        self,
        name: str,
        package: Path,
        *,
        metadata: dict[str, Any] | None = None,
        actor: str = "local",
        promote: bool = False,
    ) -> VersionInfo:
        check_model_name(name)
        staged, digest, size = self.blobs.stage(package)
        try:
            with self._write() as db:
                now = _now()
                db.execute(
                    "INSERT OR IGNORE INTO models(name, created_at) VALUES (?, ?)", (name, now)
                )
                row = db.execute(
                    "SELECT next_version, default_version FROM models WHERE name=?", (name,)
                ).fetchone()
                version = int(row["next_version"])
                # The blob is durable before the row that names it is committed.
                self.blobs.publish(staged, digest)
                db.execute(
                    "INSERT INTO versions(model, version, digest, size, created_at, metadata)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (name, version, digest, size, now, json.dumps(metadata or {})),
                )
                db.execute("UPDATE models SET next_version=? WHERE name=?", (version + 1, name))
                self._audit(db, actor, "upload", name, version, {"digest": digest, "size": size})
                if row["default_version"] is None:
                    db.execute("UPDATE models SET default_version=? WHERE name=?", (version, name))
                elif promote:
                    self._set_default(db, name, version, actor)
        finally:
            staged.unlink(missing_ok=True)
        return self.get_version(name, version)

    def promote(self, name: str, version: int, *, actor: str = "local") -> ModelInfo:
        with self._write() as db:
            self._version_row(db, name, version)
            self._set_default(db, name, version, actor)
        return self.get_model(name)

    def rollback(self, name: str, *, actor: str = "local") -> ModelInfo:
        with self._write() as db:
            model = self._model_row(db, name)
            previous, current = model["previous_version"], model["default_version"]
            if previous is None:
                raise refusals.no_previous(name)
            db.execute(
                "UPDATE models SET default_version=?, previous_version=? WHERE name=?",
                (previous, current, name),
            )
            self._audit(db, actor, "rollback", name, previous, {"from": current})
        return self.get_model(name)

    def delete_version(self, name: str, version: int, *, actor: str = "local") -> None:
        with self._write() as db:
            model = self._model_row(db, name)
            row = self._version_row(db, name, version)
            last = (
                db.execute(
                    "SELECT COUNT(*) FROM versions WHERE model=? AND version<>?", (name, version)
                ).fetchone()[0]
                == 0
            )
            if model["default_version"] == version and not last:
                raise refusals.default_not_deleted(name, version)
            db.execute("DELETE FROM versions WHERE model=? AND version=?", (name, version))
            if last:
                # The model is gone; its row stays so that its version numbers are never
                # given out again.
                db.execute(
                    "UPDATE models SET default_version=NULL, previous_version=NULL WHERE name=?",
                    (name,),
                )
            elif model["previous_version"] == version:
                db.execute("UPDATE models SET previous_version=NULL WHERE name=?", (name,))
            detail = {"digest": row["digest"], **({"model_removed": True} if last else {})}
            self._audit(db, actor, "delete", name, version, detail)
        # The row is gone for good; its blob goes in a second step, under the lock again,
        # only if no other version still names it.
        self._remove_if_unreferenced(row["digest"])

    def set_config(
        self, name: str, version: int, config: dict[str, Any], *, actor: str = "local"
    ) -> VersionInfo:
        with self._write() as db:
            self._version_row(db, name, version)
            db.execute(
                "UPDATE versions SET config=? WHERE model=? AND version=?",
                (json.dumps(config), name, version),
            )
            self._audit(db, actor, "config", name, version, config)
        return self.get_version(name, version)

    def gc(self) -> int:
        """Remove blobs no version names (left by a crash), stale staged files, and shared
        weights files no stored package holds."""
        removed = self.blobs.sweep_tmp()
        for digest in self.blobs.digests():
            removed += self._remove_if_unreferenced(digest)
        packages = [self.blobs.path(d) for d in self.blobs.digests()]
        return removed + prune_weights(self.root / "weights", packages)

    def _remove_if_unreferenced(self, digest: str) -> int:
        with self._write() as db:
            used = db.execute("SELECT 1 FROM versions WHERE digest=? LIMIT 1", (digest,)).fetchone()
            if used is None:
                self.blobs.remove(digest)
                return 1
        return 0

    def _set_default(self, db: sqlite3.Connection, name: str, version: int, actor: str) -> None:
        current = self._model_row(db, name)["default_version"]
        if current == version:
            return
        db.execute(
            "UPDATE models SET default_version=?, previous_version=? WHERE name=?",
            (version, current, name),
        )
        self._audit(db, actor, "promote", name, version, {"from": current})

    @staticmethod
    def _audit(
        db: sqlite3.Connection,
        actor: str,
        action: str,
        model: str,
        version: int | None,
        detail: dict[str, Any],
    ) -> None:
        db.execute(
            "INSERT INTO audit(at, actor, action, model, version, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (_now(), actor, action, model, version, json.dumps(detail)),
        )

    # -- reads ---------------------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        with self._read() as db:
            names = [
                r["name"]
                for r in db.execute(
                    "SELECT name FROM models WHERE EXISTS "
                    "(SELECT 1 FROM versions WHERE versions.model = models.name) ORDER BY name"
                )
            ]
            return [self._model_info(db, n) for n in names]

    def get_model(self, name: str) -> ModelInfo:
        with self._read() as db:
            return self._model_info(db, name)

    def get_version(self, name: str, version: int | None = None) -> VersionInfo:
        with self._read() as db:
            if version is None:
                version = self._model_row(db, name)["default_version"]
                if version is None:
                    raise refusals.no_default(name)
            return _version_info(self._version_row(db, name, version))

    def package_path(self, info: VersionInfo) -> Path:
        path = self.blobs.path(info.digest)
        if not path.exists():
            raise StoreError(
                f"the package of {info.model} v{info.version} is missing from the store"
            )
        return path

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
        with self._write() as db:
            model = self._model_row(db, name)
            self._version_row(db, name, candidate)
            running = db.execute(
                "SELECT id, candidate FROM rollouts WHERE model=? AND state='running'", (name,)
            ).fetchone()
            if running is not None:
                raise refusals.rollout_running(name, running["candidate"])
            baseline = model["default_version"]
            if baseline == candidate:
                raise refusals.candidate_is_default(name, candidate)
            cursor = db.execute(
                "INSERT INTO rollouts(model, candidate, baseline, mode, share, sticky_header,"
                " rules, state, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                (name, candidate, baseline, mode, share, sticky_header, json.dumps(rules), _now()),
            )
            detail = {"mode": mode, "share": share, "baseline": baseline, "rules": rules}
            self._audit(db, actor, "rollout_start", name, candidate, detail)
            row_id = cursor.lastrowid
            row = db.execute("SELECT * FROM rollouts WHERE id=?", (row_id,)).fetchone()
        return _rollout(row)

    def end_rollout(
        self, name: str, state: str, decision: dict[str, Any], *, actor: str = "local"
    ) -> Rollout:
        with self._write() as db:
            row = db.execute(
                "SELECT * FROM rollouts WHERE model=? AND state='running'", (name,)
            ).fetchone()
            if row is None:
                raise refusals.no_rollout(name)
            db.execute(
                "UPDATE rollouts SET state=?, ended_at=?, decision=? WHERE id=?",
                (state, _now(), json.dumps(decision), row["id"]),
            )
            self._audit(db, actor, f"rollout_{state}", name, row["candidate"], decision)
            ended = db.execute("SELECT * FROM rollouts WHERE id=?", (row["id"],)).fetchone()
        return _rollout(ended)

    def rollouts(self, name: str | None = None, *, running: bool = False) -> list[Rollout]:
        query = "SELECT * FROM rollouts"
        where, args = [], []
        if name is not None:
            where.append("model=?")
            args.append(name)
        if running:
            where.append("state='running'")
        if where:
            query += " WHERE " + " AND ".join(where)
        with self._read() as db:
            return [_rollout(r) for r in db.execute(query + " ORDER BY id DESC", args)]

    def set_recording(
        self, name: str, config: dict[str, Any] | None, *, actor: str = "local"
    ) -> None:
        with self._write() as db:
            self._model_row(db, name)
            if config is None:
                db.execute("DELETE FROM recordings WHERE model=?", (name,))
                self._audit(db, actor, "recording_stop", name, None, {})
                return
            db.execute(
                "INSERT INTO recordings(model, config, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(model) DO UPDATE SET config=excluded.config, "
                "updated_at=excluded.updated_at",
                (name, json.dumps(config), _now()),
            )
            self._audit(db, actor, "recording_start", name, None, config)

    def recordings(self) -> dict[str, dict[str, Any]]:
        with self._read() as db:
            rows = db.execute("SELECT model, config FROM recordings").fetchall()
        return {row["model"]: json.loads(row["config"]) for row in rows}

    def audit(self, name: str | None = None, limit: int = 100) -> list[AuditEntry]:
        query = "SELECT * FROM audit"
        args: tuple[Any, ...] = ()
        if name is not None:
            query += " WHERE model=?"
            args = (name,)
        query += " ORDER BY id DESC LIMIT ?"
        with self._read() as db:
            rows = db.execute(query, (*args, limit)).fetchall()
        return [
            AuditEntry(
                id=r["id"],
                at=r["at"],
                actor=r["actor"],
                action=r["action"],
                model=r["model"],
                version=r["version"],
                detail=json.loads(r["detail"]),
            )
            for r in rows
        ]

    # -- copy ------------------------------------------------------------------------------

    def history(self, name: str) -> ModelHistory:
        with self._read() as db:
            info = self._model_info(db, name)
            next_version = self._model_row(db, name)["next_version"]
            rollouts = db.execute(
                "SELECT * FROM rollouts WHERE model=? ORDER BY id", (name,)
            ).fetchall()
            recording = db.execute(
                "SELECT config FROM recordings WHERE model=?", (name,)
            ).fetchone()
        return ModelHistory(
            info=info,
            next_version=int(next_version),
            audit=list(reversed(self.audit(name, limit=-1))),
            rollouts=[_rollout(r) for r in rollouts],
            recording=json.loads(recording["config"]) if recording else None,
        )

    def restore(self, history: ModelHistory, package: Callable[[VersionInfo], Path]) -> None:
        info = history.info
        check_model_name(info.name)
        staged: list[tuple[Path, str]] = []
        try:
            for v in info.versions:
                path, digest, _ = self.blobs.stage(package(v))
                staged.append((path, digest))
                if digest != v.digest:
                    raise StoreError(
                        f"the package of {info.name} v{v.version} does not match its digest"
                    )
            with self._write() as db:
                row = db.execute(
                    "SELECT next_version FROM models WHERE name=?", (info.name,)
                ).fetchone()
                if (
                    row is not None
                    and db.execute(
                        "SELECT 1 FROM versions WHERE model=? LIMIT 1", (info.name,)
                    ).fetchone()
                ):
                    raise refusals.model_exists(info.name, self.url)
                next_version = max(history.next_version, row["next_version"] if row else 1)
                db.execute("DELETE FROM models WHERE name=?", (info.name,))
                db.execute(
                    "INSERT INTO models(name, created_at, default_version, previous_version,"
                    " next_version) VALUES (?, ?, ?, ?, ?)",
                    (info.name, info.created_at, info.default, info.previous, next_version),
                )
                for (path, digest), v in zip(staged, info.versions, strict=True):
                    self.blobs.publish(path, digest)
                    db.execute(
                        "INSERT INTO versions(model, version, digest, size, created_at,"
                        " metadata, config) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            info.name,
                            v.version,
                            v.digest,
                            v.size,
                            v.created_at,
                            json.dumps(v.metadata),
                            json.dumps(v.config),
                        ),
                    )
                for r in history.rollouts:
                    db.execute(
                        "INSERT INTO rollouts(model, candidate, baseline, mode, share,"
                        " sticky_header, rules, state, started_at, ended_at, decision)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            info.name,
                            r.candidate,
                            r.baseline,
                            r.mode,
                            r.share,
                            r.sticky_header,
                            json.dumps(r.rules),
                            r.state,
                            r.started_at,
                            r.ended_at,
                            json.dumps(r.decision),
                        ),
                    )
                if history.recording is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO recordings(model, config, updated_at)"
                        " VALUES (?, ?, ?)",
                        (info.name, json.dumps(history.recording), _now()),
                    )
                for e in history.audit:
                    db.execute(
                        "INSERT INTO audit(at, actor, action, model, version, detail)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (e.at, e.actor, e.action, info.name, e.version, json.dumps(e.detail)),
                    )
        finally:
            for path, _ in staged:
                path.unlink(missing_ok=True)

    def verify(self) -> list[str]:
        problems: list[str] = []
        with self._read() as db:
            rows = db.execute("SELECT model, version, digest FROM versions").fetchall()
            aliases = db.execute(
                "SELECT name, default_version, previous_version FROM models"
            ).fetchall()
            known = {(r["model"], r["version"]) for r in rows}
        for r in rows:
            path = self.blobs.path(r["digest"])
            where = f"{r['model']} v{r['version']}"
            if not path.exists():
                problems.append(f"{where}: package blob {r['digest'][:12]}… is missing")
            elif sha256_file(path) != r["digest"]:
                problems.append(f"{where}: package blob {r['digest'][:12]}… is corrupt")
        for a in aliases:
            for alias in ("default_version", "previous_version"):
                v = a[alias]
                if v is not None and (a["name"], v) not in known:
                    problems.append(f"{a['name']}: {alias} points at missing version {v}")
        return problems

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- helpers -------------------------------------------------------------------------

    def _model_row(self, db: sqlite3.Connection, name: str) -> sqlite3.Row:
        row = db.execute(
            "SELECT * FROM models WHERE name=? AND EXISTS "
            "(SELECT 1 FROM versions WHERE versions.model = models.name)",
            (name,),
        ).fetchone()
        if row is None:  # never registered, or its last version deleted
            raise refusals.model_not_found(name)
        return row  # type: ignore[no-any-return]

    def _version_row(self, db: sqlite3.Connection, name: str, version: int) -> sqlite3.Row:
        self._model_row(db, name)
        row = db.execute(
            "SELECT * FROM versions WHERE model=? AND version=?", (name, version)
        ).fetchone()
        if row is None:
            raise refusals.version_not_found(name, version)
        return row  # type: ignore[no-any-return]

    def _model_info(self, db: sqlite3.Connection, name: str) -> ModelInfo:
        model = self._model_row(db, name)
        rows = db.execute(
            "SELECT * FROM versions WHERE model=? ORDER BY version", (name,)
        ).fetchall()
        return ModelInfo(
            name=name,
            default=model["default_version"],
            previous=model["previous_version"],
            versions=[_version_info(r) for r in rows],
            created_at=model["created_at"],
        )


def _rollout(row: sqlite3.Row) -> Rollout:
    return Rollout(
        model=row["model"],
        id=row["id"],
        candidate=row["candidate"],
        baseline=row["baseline"],
        mode=row["mode"],
        share=row["share"],
        sticky_header=row["sticky_header"],
        rules=json.loads(row["rules"]),
        state=row["state"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        decision=json.loads(row["decision"]),
    )


def _version_info(row: sqlite3.Row) -> VersionInfo:
    return VersionInfo(
        model=row["model"],
        version=row["version"],
        digest=row["digest"],
        size=row["size"],
        created_at=row["created_at"],
        metadata=json.loads(row["metadata"]),
        config=json.loads(row["config"]),
    )
