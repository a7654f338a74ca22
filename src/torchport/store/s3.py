"""A store on S3-compatible object storage, shared by every replica that names it.

Layout under `s3://bucket/prefix/`::

    models/<name>.json           one model: versions, aliases, configs, rollouts, recent audit
    audit/<name>/<first id>.json older audit entries of a model, moved out in batches
    blobs/sha256/<digest>        package files, named by their sha256

A change reads the model's document, applies itself (the same rules as `SQLiteStore`) and
writes it back with `If-Match` on the ETag it read (`If-None-Match: *` for a new model):
when another writer got there first, S3 refuses the write (412) and the change is read
and applied again. So two replicas uploading at once get versions N and N+1, and no change
is ever lost. A package's blob is uploaded before the document that names it.

Packages are read through a local cache (`LocalBlobs` under `root/blobs`): a blob is
downloaded once, hashed while it arrives, and published in the cache only if its sha256 is
the digest it was registered with; a corrupt object is refused and reported, never served.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from torchport.archive import check_model_name
from torchport.archive.hashing import sha256_file
from torchport.errors import StoreError, TorchportError
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
from torchport.store.documents import ModelDocument, rollout_row, version_row
from torchport.store.location import S3Location

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger("torchport.store")

T = TypeVar("T")

BLOB_GRACE = timedelta(hours=1)
"""`gc` removes an unreferenced blob only when it is older than this: an upload names its
blob within it (an upload that finds its blob there already refreshes it first)."""
LIST_TTL_S = 0.5
"""A listing of the models is reused this long: a server's poll reads models, rollouts and
recordings together, with one LIST. This process's own writes are in it at once."""
MAX_TRIES = 64
"""Conditional writes retried after a conflict before the store reports itself busy."""


class S3Store(ModelStore):
    """A store in an S3 bucket (or any service that speaks S3 with conditional writes)."""

    def __init__(
        self,
        location: S3Location,
        *,
        cache_dir: Path,
        endpoint: str | None = None,
        client: S3Client | None = None,
    ) -> None:
        self.location = location
        self.url = location.url
        self.root = Path(cache_dir)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.blobs = LocalBlobs(self.root / "blobs")
        except OSError as exc:
            raise StoreError(f"cannot use {self.root} as the cache of {self.url}: {exc}") from None
        self.endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or None
        self._s3 = client or _client(self.endpoint)
        self._lock = threading.Lock()
        self._docs: dict[str, tuple[str, ModelDocument]] = {}
        """The last version read of each model's document, by its ETag."""
        self._downloads: dict[str, threading.Lock] = {}
        self._listed: tuple[float, dict[str, str]] = (0.0, {})
        """When the models were last listed, and their documents' ETags then."""
        self._call("head_bucket", lambda: self._s3.head_bucket(Bucket=location.bucket))
        self.blobs.sweep_tmp()

    # -- keys ----------------------------------------------------------------------------

    def _doc_key(self, name: str) -> str:
        return f"{self.location.prefix}models/{name}.json"

    def _blob_key(self, digest: str) -> str:
        return f"{self.location.prefix}blobs/sha256/{digest}"

    def _segment_key(self, name: str, first: int) -> str:
        return f"{self.location.prefix}audit/{name}/{first:010d}.json"

    # -- S3 calls, errors named once -------------------------------------------------------

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except ClientError as exc:
            raise self._failed(what, exc) from None
        except BotoCoreError as exc:
            raise StoreError(f"the object store {self.url} failed ({what}): {exc}") from None

    def _failed(self, what: str, exc: ClientError) -> TorchportError:
        code = _code(exc)
        if code in ("NoSuchBucket",) or (what == "head_bucket" and code == "404"):
            return StoreError(f"the bucket of {self.url} does not exist (or is not visible)")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return StoreError(
                f"the object store refused access to {self.url} ({code}): check the "
                "credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE)"
            )
        return StoreError(f"the object store {self.url} failed ({what}): {code}")

    # -- documents -------------------------------------------------------------------------

    def _fetch(self, name: str) -> tuple[str | None, ModelDocument | None]:
        """The model's document now (one conditional GET: 304 when the copy here is current)."""
        key = self._doc_key(name)
        with self._lock:
            known = self._docs.get(name)
        try:
            bucket = self.location.bucket
            answer = (
                self._s3.get_object(Bucket=bucket, Key=key, IfNoneMatch=known[0])
                if known
                else self._s3.get_object(Bucket=bucket, Key=key)
            )
            raw = answer["Body"].read()
        except ClientError as exc:
            code = _code(exc)
            if code == "304" and known is not None:
                return known[0], known[1].copy()
            if code in ("NoSuchKey", "404"):
                with self._lock:
                    self._docs.pop(name, None)
                return None, None
            raise self._failed(f"read {key}", exc) from None
        except BotoCoreError as exc:
            raise StoreError(f"the object store {self.url} failed (read {key}): {exc}") from None
        doc = ModelDocument.parse(raw, f"s3://{self.location.bucket}/{key}")
        etag = answer["ETag"]
        with self._lock:
            self._docs[name] = (etag, doc)
        return etag, doc.copy()

    def _change(
        self, name: str, change: Callable[[ModelDocument], T], *, create: bool = False
    ) -> T:
        """Apply `change` to the model's current document and write it back only if nobody
        wrote it meanwhile; else read it again and apply the change again."""
        key = self._doc_key(name)
        for attempt in range(MAX_TRIES):
            etag, doc = self._fetch(name)
            if doc is None:
                if not create:
                    raise refusals.model_not_found(name)
                doc = ModelDocument.new(name)
            result = change(doc)
            segment = doc.overflow()
            if segment is not None:
                self._put_segment(name, segment)
                doc.moved_out(segment)
            body = doc.dump()
            bucket, kind = self.location.bucket, "application/json"
            try:
                # Written only over the document read above, or where there was none.
                answer = (
                    self._s3.put_object(
                        Bucket=bucket, Key=key, Body=body, ContentType=kind, IfMatch=etag
                    )
                    if etag is not None
                    else self._s3.put_object(
                        Bucket=bucket, Key=key, Body=body, ContentType=kind, IfNoneMatch="*"
                    )
                )
            except ClientError as exc:
                if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    # Another writer changed it first: back off a little, read, apply again.
                    time.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))
                    continue
                raise self._failed(f"write {key}", exc) from None
            except BotoCoreError as exc:
                raise StoreError(
                    f"the object store {self.url} failed (write {key}): {exc}"
                ) from None
            with self._lock:
                self._docs[name] = (answer["ETag"], doc)
                self._listed[1][name] = answer["ETag"]
            return result
        raise StoreError(
            f"model '{name}' in {self.url} is being changed by too many writers at once; try again"
        )

    def _put_segment(self, name: str, entries: list[dict[str, Any]]) -> None:
        # The same entries always make the same segment, so a segment written by a try
        # that lost its race is as good as one written now.
        key = self._segment_key(name, entries[0]["id"])
        body = ModelDocument({"format": 1, "name": name, "audit": entries}).dump()
        try:
            self._s3.put_object(Bucket=self.location.bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            if _code(exc) not in ("PreconditionFailed", "412"):
                raise self._failed(f"write {key}", exc) from None

    def _names(self) -> dict[str, str]:
        """Every model document in the bucket, with its ETag (one LIST a thousand models)."""
        with self._lock:
            at, names = self._listed
            if time.monotonic() - at < LIST_TTL_S:
                return dict(names)
        names = self._list()
        with self._lock:
            self._listed = (time.monotonic(), names)
        return dict(names)

    def _list(self) -> dict[str, str]:
        prefix = f"{self.location.prefix}models/"
        names: dict[str, str] = {}
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=prefix
        )
        for page in self._call("list models", lambda: list(pages)):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith(".json") and "/" not in key[len(prefix) :]:
                    names[key[len(prefix) : -len(".json")]] = item["ETag"]
        return names

    def _documents(self) -> list[ModelDocument]:
        """Every model's document, current: only those whose ETag changed are read again."""
        names = self._names()
        with self._lock:
            for gone in set(self._docs) - set(names):
                del self._docs[gone]
            stale = [n for n, etag in names.items() if self._docs.get(n, ("",))[0] != etag]
        for name in stale:
            self._fetch(name)
        with self._lock:
            return [self._docs[n][1].copy() for n in sorted(names) if n in self._docs]

    def _doc(self, name: str) -> ModelDocument:
        doc = self._fetch(name)[1]
        if doc is None:
            raise refusals.model_not_found(name)
        return doc

    # -- writes ----------------------------------------------------------------------------

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
            self._put_blob(staged, digest)
            version = self._change(
                name,
                lambda doc: doc.add_version(digest, size, metadata or {}, actor, promote),
                create=True,
            )
            self.blobs.publish(staged, digest)  # the cache holds what was uploaded
        finally:
            staged.unlink(missing_ok=True)
        return self.get_version(name, version)

    def _put_blob(self, staged: Path, digest: str) -> None:
        """Upload a package file unless the bucket has it (content-addressed: same bytes)."""
        bucket, key = self.location.bucket, self._blob_key(digest)
        head = self._head(key)
        if head is not None and head["ContentLength"] == staged.stat().st_size:
            if datetime.now(UTC) - head["LastModified"] > BLOB_GRACE / 2:
                # Keep `gc` off it until the document that names it is written.
                self._call(
                    f"refresh {key}",
                    lambda: self._s3.copy_object(
                        Bucket=bucket,
                        Key=key,
                        CopySource={"Bucket": bucket, "Key": key},
                        MetadataDirective="REPLACE",
                        Metadata={"sha256": digest},
                    ),
                )
            return
        self._call(
            f"upload {key}",
            lambda: self._s3.upload_file(
                str(staged), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}}
            ),
        )

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self._s3.head_object(Bucket=self.location.bucket, Key=key))
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._failed(f"look up {key}", exc) from None
        except BotoCoreError as exc:
            raise StoreError(f"the object store {self.url} failed (look up {key}): {exc}") from None

    def promote(self, name: str, version: int, *, actor: str = "local") -> ModelInfo:
        def change(doc: ModelDocument) -> ModelInfo:
            doc.promote(version, actor)
            return doc.info()

        return self._change(name, change)

    def rollback(self, name: str, *, actor: str = "local") -> ModelInfo:
        def change(doc: ModelDocument) -> ModelInfo:
            doc.rollback(actor)
            return doc.info()

        return self._change(name, change)

    def delete_version(self, name: str, version: int, *, actor: str = "local") -> None:
        # The blob stays until `gc`: another model may name the same bytes, and an upload
        # of them may be on its way (`BLOB_GRACE`).
        self._change(name, lambda doc: doc.delete_version(version, actor))

    def set_config(
        self, name: str, version: int, config: dict[str, Any], *, actor: str = "local"
    ) -> VersionInfo:
        def change(doc: ModelDocument) -> VersionInfo:
            doc.set_config(version, config, actor)
            return doc.version(version)

        return self._change(name, change)

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
        return self._change(
            name,
            lambda doc: doc.start_rollout(
                candidate=candidate,
                mode=mode,
                share=share,
                sticky_header=sticky_header,
                rules=rules,
                actor=actor,
            ),
        )

    def end_rollout(
        self, name: str, state: str, decision: dict[str, Any], *, actor: str = "local"
    ) -> Rollout:
        return self._change(name, lambda doc: doc.end_rollout(state, decision, actor))

    def set_recording(
        self, name: str, config: dict[str, Any] | None, *, actor: str = "local"
    ) -> None:
        self._change(name, lambda doc: doc.set_recording(config, actor))

    def gc(self) -> int:
        removed = self.blobs.sweep_tmp()
        used = set().union(*(doc.digests() for doc in self._documents()))
        cutoff = datetime.now(UTC) - BLOB_GRACE
        prefix = f"{self.location.prefix}blobs/sha256/"
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=prefix
        )
        for page in self._call("list blobs", lambda: list(pages)):
            for item in page.get("Contents", []):
                digest = item["Key"][len(prefix) :]
                if digest not in used and item["LastModified"] < cutoff:
                    key = item["Key"]
                    self._call(
                        f"delete {key}",
                        partial(self._s3.delete_object, Bucket=self.location.bucket, Key=key),
                    )
                    self.blobs.remove(digest)
                    removed += 1
        for digest in self.blobs.digests() - used:  # the cache keeps only what is named
            self.blobs.remove(digest)
        packages = [self.blobs.path(d) for d in self.blobs.digests()]
        return removed + prune_weights(self.root / "weights", packages)

    # -- reads -----------------------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        return [doc.info() for doc in self._documents() if doc.live]

    def get_model(self, name: str) -> ModelInfo:
        return self._doc(name).info()

    def get_version(self, name: str, version: int | None = None) -> VersionInfo:
        return self._doc(name).version(version)

    def package_path(self, info: VersionInfo) -> Path:
        """The package in the local cache: downloaded once, used only if its sha256 is the
        one it was registered with."""
        path = self.blobs.path(info.digest)
        if path.exists():
            return path
        with self._lock:
            lock = self._downloads.setdefault(info.digest, threading.Lock())
        with lock:  # one download per blob, however many loads wait for it
            if not path.exists():
                self._download(info)
        return path

    def _download(self, info: VersionInfo) -> None:
        key = self._blob_key(info.digest)
        where = f"the package of {info.model} v{info.version}"
        try:
            answer = self._s3.get_object(Bucket=self.location.bucket, Key=key)
            staged, digest, size = self.blobs.stage_chunks(_chunks(answer["Body"]))
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                raise StoreError(f"{where} is missing from {self.url}") from None
            raise self._failed(f"read {key}", exc) from None
        except (OSError, BotoCoreError) as exc:
            raise StoreError(f"{where} could not be downloaded from {self.url}: {exc}") from None
        if digest != info.digest or size != info.size:
            staged.unlink(missing_ok=True)
            log.error(
                "%s in %s is corrupt (sha256 %s, %d bytes; registered %s, %d bytes): "
                "refused, not served",
                where,
                self.url,
                digest[:12],
                size,
                info.digest[:12],
                info.size,
            )
            raise StoreError(
                f"{where} in {self.url} is corrupt: its sha256 is {digest[:12]}…, "
                f"registered as {info.digest[:12]}…; it is not served"
            )
        self.blobs.publish(staged, info.digest)

    def rollouts(self, name: str | None = None, *, running: bool = False) -> list[Rollout]:
        docs = [self._doc(name)] if name is not None else self._documents()
        found = [r for doc in docs for r in doc.rollouts()]
        if running:
            found = [r for r in found if r.state == "running"]
        return sorted(found, key=lambda r: (r.started_at, r.id), reverse=True)

    def recordings(self) -> dict[str, dict[str, Any]]:
        return {
            doc.name: doc.data["recording"]
            for doc in self._documents()
            if doc.live and doc.data["recording"] is not None
        }

    def audit(self, name: str | None = None, limit: int = 100) -> list[AuditEntry]:
        docs = [self._doc(name)] if name is not None else self._documents()
        entries: list[AuditEntry] = []
        for doc in docs:
            entries.extend(self._audit_of(doc, limit))
        entries.sort(key=lambda e: (e.at, e.id), reverse=True)
        return entries[:limit]

    def _audit_of(self, doc: ModelDocument, limit: int | None) -> list[AuditEntry]:
        """A model's newest `limit` entries (all with None), newest first."""
        entries = list(reversed(doc.recent_audit()))
        for first, _ in reversed(doc.data["audit_segments"]):
            if limit is not None and len(entries) >= limit:
                break
            key = self._segment_key(doc.name, first)
            answer = self._call(
                f"read {key}", partial(self._s3.get_object, Bucket=self.location.bucket, Key=key)
            )
            segment = ModelDocument.parse(answer["Body"].read(), key)
            entries.extend(doc.audit_entry(e) for e in reversed(segment.data["audit"]))
        return entries if limit is None else entries[:limit]

    # -- copy ------------------------------------------------------------------------------

    def history(self, name: str) -> ModelHistory:
        doc = self._doc(name)
        return ModelHistory(
            info=doc.info(),
            next_version=doc.data["next_version"],
            audit=list(reversed(self._audit_of(doc, None))),
            rollouts=doc.rollouts(),
            recording=doc.data["recording"],
        )

    def restore(self, history: ModelHistory, package: Callable[[VersionInfo], Path]) -> None:
        info = history.info
        check_model_name(info.name)
        for v in info.versions:
            staged, digest, _ = self.blobs.stage(package(v))
            try:
                if digest != v.digest:
                    raise StoreError(
                        f"the package of {info.name} v{v.version} does not match its digest"
                    )
                self._put_blob(staged, digest)
            finally:
                staged.unlink(missing_ok=True)

        def restore(doc: ModelDocument) -> None:
            if doc.live:
                raise refusals.model_exists(info.name, self.url)
            d = doc.data
            d.update(
                created_at=info.created_at,
                next_version=max(history.next_version, d["next_version"]),
                default=info.default,
                previous=info.previous,
                versions=[version_row(v) for v in info.versions],
                recording=history.recording,
            )
            for r in history.rollouts:
                d["rollouts"].append(rollout_row(r, d["next_rollout"]))
                d["next_rollout"] += 1
            for e in history.audit:
                d["audit"].append(
                    {
                        "id": d["next_audit"],
                        "at": e.at,
                        "actor": e.actor,
                        "action": e.action,
                        "version": e.version,
                        "detail": e.detail,
                    }
                )
                d["next_audit"] += 1
                segment = doc.overflow()
                if segment is not None:
                    self._put_segment(info.name, segment)
                    doc.moved_out(segment)

        self._change(info.name, restore, create=True)

    # -- checks ----------------------------------------------------------------------------

    def verify(self) -> list[str]:
        problems: list[str] = []
        for doc in self._documents():
            if not doc.live:
                continue
            info = doc.info()
            known = {v.version for v in info.versions}
            for v in info.versions:
                where = f"{info.name} v{v.version}"
                cached = self.blobs.path(v.digest)
                if cached.exists() and sha256_file(cached) != v.digest:
                    self.blobs.remove(v.digest)  # a damaged cache is read again, never served
                    problems.append(f"{where}: the cached copy of {v.digest[:12]}… was corrupt")
                try:
                    self.package_path(v)
                except StoreError as exc:
                    problems.append(f"{where}: {exc}")
            for alias in ("default", "previous"):
                value = getattr(info, alias)
                if value is not None and value not in known:
                    problems.append(f"{info.name}: {alias} points at missing version {value}")
        return problems

    def close(self) -> None:
        self._s3.close()


def _client(endpoint: str | None) -> S3Client:
    """An S3 client from the usual environment (AWS_REGION, AWS_ACCESS_KEY_ID, AWS_PROFILE …),
    with bounded timeouts and retries."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=32,
        # S3-compatible services on a host name of their own (MinIO, a local server) want
        # path-style addresses; AWS itself answers both.
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or str(status)


def _chunks(body: Any) -> Iterator[bytes]:
    while chunk := body.read(1 << 20):
        yield chunk
