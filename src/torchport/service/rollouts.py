"""Rollouts: a candidate version proves itself on a model's live traffic, then takes over
or is sent back — on one server, with no service mesh.

- **canary**: a share of the requests that name no version is answered by the candidate
  (sticky by a request header when asked: the header's value, hashed, picks the side, so
  one caller stays on one version); the default also runs those requests off the request
  path, so the two are compared on the same inputs.
- **shadow**: a share of requests is also sent to the candidate after the default has
  answered; its answer is compared and never returned.

Work off the request path (the other side of a comparison) waits in a bounded queue and is
dropped, and counted, when the queue is full: a comparison never delays or fails a client's
request. Figures (`RolloutStats`) are kept per version over a sliding window and in total;
rules (`Rules`) are checked every `check_every_s`: broken beyond their margin → rolled back
at once, all kept after `min_requests` → promoted. The state lives in the store (a restart
resumes the rollout) and every decision is in the audit log with its figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from torchport.agreement import TOLERANCES, Tolerance
from torchport.archive.manifest import describe_validation_error
from torchport.errors import Conflict, InvalidInput, TorchportError
from torchport.observability.metrics import RolloutGauges
from torchport.store import ModelStore, Rollout
from torchport.types import Datatype, Signature, Tensors, TensorSpec

log = logging.getLogger("torchport.rollouts")

Measure = Literal["argmax", "cosine", "allclose"]
CLIENT_ERRORS = frozenset(
    {"invalid_input", "unsupported_media_type", "not_acceptable", "too_large", "request_timeout"}
)
"""Errors that are the request's fault, not the version's: not counted against either."""
WINDOW_S = 60.0
QUEUE = 256
"""Comparisons waiting off the request path, per server; past it they are dropped."""
COMPARERS = 16
"""Comparisons run at once: enough to share the other side's batches under load."""


class Rules(BaseModel):
    """When a rollout decides by itself. Checked every `check_every_s` on the sliding
    window and on the totals."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_requests: int = Field(default=500, ge=1, le=10_000_000)
    """Candidate requests before it may be promoted."""
    max_error_rate_increase: float = Field(default=0.005, ge=0, le=1)
    """The candidate's error rate may exceed the default's by this much (0.005: 0.5 %)."""
    max_p99_ratio: float = Field(default=1.2, gt=0, le=1000)
    """The candidate's p99 latency may be this many times the default's…"""
    p99_slack_ms: float = Field(default=1.0, ge=0, le=600_000)
    """…or this much above it, whichever is more: sub-millisecond p99s differ by more than
    a fifth from noise alone (a thread's wake-up, a batch run on the event loop or not)."""
    min_agreement: float = Field(default=0.99, ge=0, le=1)
    """Share of compared rows on which every output agrees (argmax, cosine or allclose)."""
    min_cosine: float = Field(default=0.99, ge=-1, le=1)
    """For `cosine` outputs: the similarity a row needs to agree."""
    margin: float = Field(default=0.5, ge=0, le=100)
    """A rule broken by more than this share of its limit rolls back at once (before
    `min_requests`), e.g. p99 over 1.2 x (1 + 0.5) times the default's."""
    min_requests_to_roll_back: int = Field(default=50, ge=1, le=10_000_000)
    """Candidate requests before a broken rule may roll back."""
    min_latency_samples: int = Field(default=200, ge=1, le=10_000_000)
    """Answered requests each side needs in the window before p99s are compared (a p99 of
    a few dozen is noise, and a newly loaded version's first answers are slower)."""
    outputs: dict[str, Measure] = Field(default_factory=dict)
    """How each output is compared, when not as its signature suggests."""
    check_every_s: float = Field(default=2.0, gt=0, le=3600)


class RolloutSpec(BaseModel):
    """A rollout as a client asks for one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidate: int = Field(ge=1)
    mode: Literal["canary", "shadow"] = "canary"
    share: float = Field(default=0.1, gt=0, le=1)
    sticky_header: str | None = Field(default=None, min_length=1, max_length=128)
    rules: Rules | None = Field(default_factory=Rules)
    """None: the rollout only reports."""

    @classmethod
    def parse(cls, body: Any) -> RolloutSpec:
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "rollout"
            raise InvalidInput(describe_validation_error(exc), field=where) from None


def measures(signature: Signature, overrides: Mapping[str, str]) -> dict[str, Measure]:
    """How each output is compared: a classifier's scores (2 axes, several classes) by
    argmax, an embedding (a float vector of 16 or more) by cosine, anything else by the
    tolerance `agreement` uses. `overrides` must name outputs that exist."""
    names = {s.name for s in signature.outputs}
    for name in overrides:
        if name not in names:
            raise InvalidInput(
                f"rules.outputs names '{name}', which is not an output "
                f"(outputs: {', '.join(sorted(names))})",
                field=f"rules.outputs.{name}",
            )
    return {s.name: overrides.get(s.name) or _measure(s) for s in signature.outputs}  # type: ignore[misc]


def _measure(spec: TensorSpec) -> Measure:
    floats = spec.datatype in (Datatype.FP16, Datatype.FP32, Datatype.FP64)
    if floats and len(spec.shape) == 2 and spec.shape[1] != 1:
        return "cosine" if spec.shape[1] >= 16 or spec.shape[1] == -1 else "argmax"
    return "allclose"


@dataclass
class _Side:
    """One version's requests in a rollout."""

    requests: int = 0
    errors: int = 0
    latencies: deque[tuple[float, float, bool]] = field(
        default_factory=lambda: deque(maxlen=50_000)
    )

    def note(self, seconds: float, ok: bool) -> None:
        self.requests += 1
        self.errors += 0 if ok else 1
        self.latencies.append((time.monotonic(), seconds, ok))

    def figures(self, since: float | None) -> dict[str, Any]:
        kept = [(s, ok) for t, s, ok in self.latencies if since is None or t >= since]
        if since is None:
            count, errors = self.requests, self.errors
        else:
            count, errors = len(kept), sum(1 for _, ok in kept if not ok)
        times = np.array([s for s, ok in kept if ok], dtype=np.float64)
        return {
            "requests": count,
            "errors": errors,
            "error_rate": errors / count if count else 0.0,
            "p50_ms": float(np.percentile(times, 50) * 1000) if times.size else None,
            "p99_ms": float(np.percentile(times, 99) * 1000) if times.size else None,
        }


@dataclass
class OutputAgreement:
    """How one output of the candidate agrees with the default's on the same requests."""

    measure: Measure
    tolerance: Tolerance
    rows: int = 0
    agreeing: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    cosine_min: float = 1.0
    cosine_sum: float = 0.0

    def add(self, want: np.ndarray, have: np.ndarray, min_cosine: float) -> None:
        if want.shape != have.shape or want.dtype == object or want.ndim == 0:
            rows = len(want) if want.ndim else 1
            self.rows += rows
            self.agreeing += (
                rows if (want.shape == have.shape and np.array_equal(want, have)) else 0
            )
            return
        w = want.reshape(len(want), -1).astype(np.float64)
        h = have.reshape(len(have), -1).astype(np.float64)
        diff = np.abs(h - w)
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.max_rel = max(
            self.max_rel, float((diff / np.maximum(np.abs(w), 1e-12)).max(initial=0.0))
        )
        if self.measure == "argmax":
            same = np.argmax(w, axis=1) == np.argmax(h, axis=1)
        elif self.measure == "cosine":
            norms = np.linalg.norm(w, axis=1) * np.linalg.norm(h, axis=1)
            cosine = np.sum(w * h, axis=1) / np.maximum(norms, 1e-12)
            self.cosine_min = min(self.cosine_min, float(cosine.min(initial=1.0)))
            self.cosine_sum += float(cosine.sum())
            same = cosine >= min_cosine
        else:
            close = diff <= self.tolerance.atol + self.tolerance.rtol * np.abs(w)
            same = np.all(close | (w == h), axis=1)
        self.rows += len(w)
        self.agreeing += int(np.sum(same))

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "measure": self.measure,
            "rows": self.rows,
            "agreement": self.agreeing / self.rows if self.rows else None,
            "max_abs_diff": self.max_abs,
            "max_rel_diff": self.max_rel,
        }
        if self.measure == "cosine":
            out["cosine_min"] = self.cosine_min if self.rows else None
            out["cosine_mean"] = self.cosine_sum / self.rows if self.rows else None
        return out


class RolloutStats:
    """A running rollout's figures: per version, and the candidate's agreement."""

    def __init__(self, rollout: Rollout, signature: Signature) -> None:
        self.rollout = rollout
        rules = Rules.model_validate(rollout.rules) if rollout.rules else None
        self.rules = rules
        chosen = measures(signature, rules.outputs if rules else {})
        self.sides = {rollout.baseline: _Side(), rollout.candidate: _Side()}
        self.outputs = {
            s.name: OutputAgreement(chosen[s.name], TOLERANCES.get(s.datatype, Tolerance(0.0, 0.0)))
            for s in signature.outputs
        }
        self.compared = 0
        self.dropped = 0
        self.seen = 0
        """Requests routed without a sticky key (the share is taken of these, evenly)."""
        self.started = time.monotonic()

    def note(self, version: int, seconds: float, ok: bool) -> None:
        side = self.sides.get(version)
        if side is not None:
            side.note(seconds, ok)

    def compare(self, default: Tensors, candidate: Tensors) -> None:
        min_cosine = self.rules.min_cosine if self.rules else 0.99
        for name, agreement in self.outputs.items():
            if name in default and name in candidate:
                agreement.add(np.asarray(default[name]), np.asarray(candidate[name]), min_cosine)
        self.compared += 1

    def agreement(self) -> float | None:
        """The share of compared rows on which every output agrees (the lowest)."""
        shares = [a.agreeing / a.rows for a in self.outputs.values() if a.rows]
        return min(shares) if shares else None

    def figures(self) -> dict[str, Any]:
        since = time.monotonic() - WINDOW_S
        r = self.rollout
        return {
            "versions": {
                str(v): {
                    "role": "candidate" if v == r.candidate else "default",
                    "window": side.figures(since),
                    "total": side.figures(None),
                }
                for v, side in self.sides.items()
            },
            "outputs": {name: a.figures() for name, a in self.outputs.items()},
            "agreement": self.agreement(),
            "compared": self.compared,
            "dropped": self.dropped,
            "window_s": WINDOW_S,
        }

    def gauges(self) -> RolloutGauges:
        """The figures in total, for `/metrics`."""
        since = time.monotonic() - WINDOW_S
        r = self.rollout
        versions = []
        for version, side in self.sides.items():
            window = side.figures(since)
            p99 = window["p99_ms"] / 1000 if window["p99_ms"] is not None else None
            role = "candidate" if version == r.candidate else "default"
            versions.append((version, role, side.requests, side.errors, p99))
        outputs = [
            (name, a.measure, a.agreeing / a.rows if a.rows else None, a.max_abs)
            for name, a in self.outputs.items()
        ]
        return RolloutGauges(
            r.model, r.candidate, r.mode, r.share, tuple(versions), tuple(outputs),
            self.compared, self.dropped,
        )  # fmt: skip

    def verdict(self) -> tuple[str, str] | None:
        """(`promote` or `roll_back`, why) when the rules decide, else None."""
        rules = self.rules
        if rules is None:
            return None
        r = self.rollout
        base, cand = self.sides[r.baseline], self.sides[r.candidate]
        if cand.requests < rules.min_requests_to_roll_back:
            return None
        since = time.monotonic() - WINDOW_S
        b, c = base.figures(since), cand.figures(since)
        bt, ct = base.figures(None), cand.figures(None)
        broken: list[tuple[str, float]] = []  # (what, by how much of its limit)
        error_limit = bt["error_rate"] + rules.max_error_rate_increase
        for figures, default in ((c, b), (ct, bt)):
            limit = default["error_rate"] + rules.max_error_rate_increase
            if figures["error_rate"] > limit:
                broken.append(
                    (
                        f"error rate {figures['error_rate']:.2%} over {limit:.2%}",
                        (figures["error_rate"] - limit) / max(rules.max_error_rate_increase, 1e-9),
                    )
                )
        samples = min(c["requests"] - c["errors"], b["requests"] - b["errors"])
        if c["p99_ms"] and b["p99_ms"] and samples >= rules.min_latency_samples:
            limit_ms = max(b["p99_ms"] * rules.max_p99_ratio, b["p99_ms"] + rules.p99_slack_ms)
            if c["p99_ms"] > limit_ms:
                broken.append(
                    (
                        f"p99 {c['p99_ms']:.2f} ms over {limit_ms:.2f} ms",
                        c["p99_ms"] / limit_ms - 1,
                    )
                )
        agreement = self.agreement()
        if agreement is not None and agreement < rules.min_agreement:
            broken.append(
                (
                    f"agreement {agreement:.2%} under {rules.min_agreement:.2%}",
                    (rules.min_agreement - agreement) / max(1 - rules.min_agreement, 1e-9),
                )
            )
        beyond = [what for what, by in broken if by > rules.margin]
        if beyond:
            return "roll_back", "; ".join(beyond)
        if not broken and ct["requests"] >= rules.min_requests and agreement is not None:
            return "promote", (
                f"{ct['requests']} candidate requests: error rate {ct['error_rate']:.2%} "
                f"(limit {error_limit:.2%}), agreement {agreement:.2%}"
            )
        return None


def pick(stats: RolloutStats, headers: Mapping[str, str] | None) -> bool:
    """Whether this request is in the rollout's share (the candidate answers it, in a
    canary; it is also sent to the candidate, in a shadow): by the sticky header's value,
    hashed, when the rollout has one and the request sends it; else every
    1/share-th request, evenly spread, so the share is exact."""
    rollout = stats.rollout
    if rollout.sticky_header and headers:
        value = headers.get(rollout.sticky_header.lower())
        if value is not None:
            digest = hashlib.sha256(f"{rollout.id}:{value}".encode()).digest()
            return int.from_bytes(digest[:8], "big") / 2**64 < rollout.share
    seen = stats.seen
    stats.seen += 1
    return math.floor((seen + 1) * rollout.share) > math.floor(seen * rollout.share)


class Rollouts:
    """The running rollouts of one server: routing, figures, comparisons, decisions."""

    def __init__(self, store: ModelStore, changed: Callable[[], None] | None = None) -> None:
        self.store = store
        self._changed = changed or (lambda: None)
        """Told when a rollout starts or ends (front ends then ask again what serves a model,
        and a sticky rollout's header)."""
        self._running: dict[str, RolloutStats] = {}
        self._queue: asyncio.Queue[Callable[[], Any]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.decide: Callable[[str, str, str, dict[str, Any]], None] | None = None
        """Set by management: carry out a verdict (model, `promote`/`roll_back`, why,
        figures)."""

    def active(self, model: str) -> RolloutStats | None:
        return self._running.get(model)

    def running(self) -> list[RolloutStats]:
        return list(self._running.values())

    def follow(self, rollout: Rollout, signature: Signature) -> RolloutStats:
        stats = RolloutStats(rollout, signature)
        self._running[rollout.model] = stats
        self._changed()
        return stats

    def forget(self, model: str) -> None:
        if self._running.pop(model, None) is not None:
            self._changed()

    def offload(self, work: Callable[[], Any], stats: RolloutStats) -> None:
        """Queue a comparison off the request path; dropped (and counted) when full."""
        queue = self._queue
        if queue is None:
            stats.dropped += 1
            return
        try:
            queue.put_nowait(work)
        except asyncio.QueueFull:
            stats.dropped += 1

    def start(self) -> None:
        """On the event loop: the comparison worker and the rules' clock."""
        if self._queue is not None:
            return
        self._queue = asyncio.Queue(QUEUE)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._compare()) for _ in range(COMPARERS)]
        self._tasks.append(loop.create_task(self._check()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._queue = None

    async def _compare(self) -> None:
        assert self._queue is not None
        while True:
            work = await self._queue.get()
            try:
                await work()
            except TorchportError as exc:
                log.debug("a rollout comparison failed: %s", exc)
            except Exception:
                log.exception("a rollout comparison failed")

    async def _check(self) -> None:
        while True:
            every = min(
                (s.rules.check_every_s for s in self._running.values() if s.rules), default=2.0
            )
            await asyncio.sleep(every)
            for model, stats in list(self._running.items()):
                verdict = stats.verdict()
                if verdict is None or self.decide is None:
                    continue
                action, why = verdict
                figures = stats.figures()
                try:
                    await asyncio.to_thread(self.decide, model, action, why, figures)
                except Conflict:
                    pass  # ended meanwhile
                except Exception:
                    log.exception("the rollout of %s could not %s", model, action)
