"""Recorded traffic: a sample of a model's requests and the answers they got, as JSON Lines
under the store (`recordings/MODEL/*.jsonl`), for `torchport traffic replay`.

A recording takes `share` of the model's requests (evenly spread), at most
`max_per_second`, none larger than `max_record_bytes`; the inputs named in `redact` are
written as their datatype and shape only. Records are written by a thread of their own
from a bounded queue: a request never waits on the disk, and what does not fit is dropped
and counted. Files rotate at `rotate_bytes`; past `max_bytes` the oldest go.

One record a line: `{"at", "model", "version", "id", "inputs": {name: {"datatype",
"shape", "data"}}, "outputs": {…}}` — `data` as nested lists (BYTES as text, or
`{"b64": …}`), a redacted input `{"datatype", "shape", "redacted": true}`.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from torchport.archive.manifest import check_model_name, describe_validation_error
from torchport.errors import InvalidInput
from torchport.tensors import to_jsonable
from torchport.types import Datatype, Signature, Tensors

log = logging.getLogger("torchport.recording")

QUEUE = 1024


class RecordingConfig(BaseModel):
    """How a model's traffic is recorded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: float = Field(default=0.1, gt=0, le=1)
    """Share of the requests recorded, evenly spread."""
    max_per_second: float = Field(default=50.0, gt=0, le=100_000)
    max_record_bytes: int = Field(default=1024 * 1024, gt=0, le=64 * 1024 * 1024)
    """A request (inputs and outputs) larger than this is not recorded."""
    rotate_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    """The model's recordings on disk, at most: the oldest files go first."""
    redact: list[str] = Field(default_factory=list)
    """Inputs written as their datatype and shape only (personal data, secrets)."""

    @classmethod
    def parse(cls, body: Any, signature: Signature) -> RecordingConfig:
        try:
            config = cls.model_validate(body)
        except ValidationError as exc:
            where = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "recording"
            raise InvalidInput(describe_validation_error(exc), field=where) from None
        names = {s.name for s in signature.inputs}
        for name in config.redact:
            if name not in names:
                raise InvalidInput(
                    f"redact names '{name}', which is not an input "
                    f"(inputs: {', '.join(sorted(names))})",
                    field="redact",
                )
        return config


@dataclass
class _Model:
    config: RecordingConfig
    seen: int = 0
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)
    recorded: int = 0
    dropped: int = 0


class Recorder:
    """The recordings of one server."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._models: dict[str, _Model] = {}
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(QUEUE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def configure(self, model: str, config: RecordingConfig | None) -> None:
        if config is None:
            self._models.pop(model, None)
            return
        known = self._models.get(model)
        self._models[model] = (
            _Model(config, tokens=config.max_per_second)
            if known is None
            else (
                _Model(
                    config, known.seen, known.tokens, known.refilled, known.recorded, known.dropped
                )
            )
        )

    def config(self, model: str) -> RecordingConfig | None:
        """What the model records now (None: nothing)."""
        known = self._models.get(model)
        return None if known is None else known.config

    def wants(self, model: str) -> bool:
        """Whether the model records its traffic (one look-up: the hot path asks)."""
        return model in self._models

    def status(self, model: str) -> dict[str, Any]:
        state = self._models.get(model)
        files = sorted((self.root / check_model_name(model)).glob("*.jsonl"))
        return {
            "recording": state.config.model_dump() if state is not None else None,
            "recorded": state.recorded if state is not None else 0,
            "dropped": state.dropped if state is not None else 0,
            "files": [{"name": f.name, "bytes": f.stat().st_size} for f in files],
        }

    def note(
        self,
        model: str,
        version: int,
        request_id: str | None,
        inputs: Tensors,
        outputs: Tensors,
    ) -> None:
        """On the request path: decide cheaply, queue, never wait."""
        state = self._models.get(model)
        if state is None:
            return
        config = state.config
        seen = state.seen
        state.seen += 1
        if math.floor((seen + 1) * config.share) <= math.floor(seen * config.share):
            return
        now = time.monotonic()
        state.tokens = min(
            config.max_per_second, state.tokens + (now - state.refilled) * config.max_per_second
        )
        state.refilled = now
        size = sum(a.nbytes for a in inputs.values()) + sum(a.nbytes for a in outputs.values())
        if state.tokens < 1 or size > config.max_record_bytes:
            state.dropped += 1
            return
        state.tokens -= 1
        item = {"version": version, "id": request_id, "inputs": inputs, "outputs": outputs}
        try:
            self._queue.put_nowait((model, item))
        except queue.Full:
            state.dropped += 1
            return
        state.recorded += 1
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._write, name="torchport-recorder", daemon=True
                    )
                    self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def _write(self) -> None:
        files: dict[str, Path] = {}
        while True:
            got = self._queue.get()
            if got is None:
                return
            model, item = got
            state = self._models.get(model)
            if state is None:
                continue
            try:
                line = _dumps(self._record(model, item, state.config))
                path = files.get(model)
                if path is None or path.stat().st_size > state.config.rotate_bytes:
                    path = self._new_file(model)
                    files[model] = path
                    self._trim(model, state.config.max_bytes)
                with path.open("a") as f:
                    f.write(line)
            except (OSError, ValueError):
                log.exception("recording a request of %s failed", model)

    def _record(self, model: str, item: dict[str, Any], config: RecordingConfig) -> dict[str, Any]:
        redact = set(config.redact)
        return {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "model": model,
            "version": item["version"],
            "id": item["id"],
            "inputs": {n: _tensor(a, n in redact) for n, a in item["inputs"].items()},
            "outputs": {n: _tensor(a, False) for n, a in item["outputs"].items()},
        }

    def _new_file(self, model: str) -> Path:
        folder = self.root / check_model_name(model)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        return folder / f"{stamp}-{os.getpid()}.jsonl"

    def _trim(self, model: str, max_bytes: int) -> None:
        files = sorted((self.root / model).glob("*.jsonl"))
        total = sum(f.stat().st_size for f in files)
        for old in files[:-1]:
            if total <= max_bytes:
                break
            total -= old.stat().st_size
            old.unlink(missing_ok=True)


def _tensor(array: Any, redacted: bool) -> dict[str, Any]:
    described: dict[str, Any] = {
        "datatype": Datatype.from_numpy(array.dtype).value,
        "shape": list(array.shape),
    }
    if redacted:
        described["redacted"] = True
    elif array.dtype == object:
        described["data"] = to_jsonable(array)
    else:
        described["data"] = np.ascontiguousarray(array)  # orjson writes it whole, fast
    return described


def _dumps(record: dict[str, Any]) -> str:
    # orjson (the server's JSON library) writes a numeric array whole, without a Python
    # object per element: a recorded request costs the writer thread a few microseconds.
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n"
