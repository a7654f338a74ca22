"""Live figures for the dashboard: the server's own Prometheus registry sampled every few
seconds and turned into per-version series (requests per second, p50/p99 latency, error
rate, mean batch size, queue depth), as Prometheus and Grafana would compute them.

Reading the registry (not a second set of counters) keeps the page and `/metrics` in
agreement; quantiles are interpolated within histogram buckets like `histogram_quantile`.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

Key = tuple[str, int]  # model, version

INTERVAL_SECONDS = 2.0
KEEP_POINTS = 150  # five minutes at the default interval
FIELDS = ("rps", "p50_ms", "p99_ms", "error_rate", "batch_size", "queue_depth")


@dataclass
class _Counts:
    """Cumulative counts of one version at one instant."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative
    batches: float = 0.0
    batch_rows: float = 0.0
    queue_depth: float = 0.0


@dataclass(frozen=True)
class Point:
    t: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    error_rate: float | None
    batch_size: float | None
    queue_depth: float


class LiveStats:
    """A rolling window of points per model version, one per `sample()` call (which the
    server makes every `interval` seconds)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        interval: float = INTERVAL_SECONDS,
        keep: int = KEEP_POINTS,
    ) -> None:
        self.interval = interval
        self.keep = keep
        self._registry = registry
        self._lock = threading.Lock()
        self._last: tuple[float, dict[Key, _Counts]] | None = None
        self._series: dict[Key, deque[Point]] = {}

    def sample(self, now: float | None = None) -> None:
        """Read the registry and append a point for every version seen in the interval."""
        now = time.time() if now is None else now
        counts = _read(self._registry)
        with self._lock:
            last = self._last
            self._last = (now, counts)
            if last is None or now <= last[0]:
                return
            then, before = last
            for key, c in counts.items():
                point = _point(now, now - then, before.get(key, _Counts()), c)
                self._series.setdefault(key, deque(maxlen=self.keep)).append(point)

    def series(self, model: str) -> dict[str, dict[str, list[float | None]]]:
        """Every retained point of the model's versions, as columns (`t` in epoch seconds)."""
        with self._lock:
            chosen = {v: list(s) for (m, v), s in self._series.items() if m == model}
        return {
            str(version): {
                "t": [p.t for p in points],
                **{name: [getattr(p, name) for p in points] for name in FIELDS},
            }
            for version, points in sorted(chosen.items())
        }

    def latest(self) -> list[dict[str, Any]]:
        """The newest point of every version: what the model list shows."""
        with self._lock:
            newest = {key: s[-1] for key, s in self._series.items() if s}
        return [
            {"model": m, "version": v, **{name: getattr(p, name) for name in ("t", *FIELDS)}}
            for (m, v), p in sorted(newest.items())
        ]


def _read(registry: CollectorRegistry) -> dict[Key, _Counts]:
    counts: dict[Key, _Counts] = {}

    def of(labels: Mapping[str, str]) -> _Counts | None:
        model, version = labels.get("model", ""), labels.get("version", "")
        if not model or not version.isdigit():  # "" counts requests for unknown models
            return None
        return counts.setdefault((model, int(version)), _Counts())

    for family in registry.collect():
        for s in family.samples:
            c = of(s.labels)
            if c is None:
                continue
            if s.name == "torchport_requests_total":
                c.requests += s.value
                if s.labels.get("outcome") != "ok":
                    c.errors += s.value
            elif s.name == "torchport_request_duration_seconds_bucket":
                bound = float(s.labels["le"])  # summed over protocols
                c.buckets[bound] = c.buckets.get(bound, 0.0) + s.value
            elif s.name == "torchport_batch_size_count":
                c.batches += s.value
            elif s.name == "torchport_batch_size_sum":
                c.batch_rows += s.value
            elif s.name == "torchport_queue_depth":
                c.queue_depth = s.value
    return counts


def _point(now: float, seconds: float, before: _Counts, after: _Counts) -> Point:
    requests = max(0.0, after.requests - before.requests)
    batches = after.batches - before.batches
    buckets = {b: n - before.buckets.get(b, 0.0) for b, n in after.buckets.items()}
    return Point(
        t=now,
        rps=requests / seconds,
        p50_ms=_ms(quantile(0.5, buckets)),
        p99_ms=_ms(quantile(0.99, buckets)),
        error_rate=(after.errors - before.errors) / requests if requests else None,
        batch_size=(after.batch_rows - before.batch_rows) / batches if batches > 0 else None,
        queue_depth=after.queue_depth,
    )


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of cumulative bucket counts (upper bound -> count), interpolated
    linearly within its bucket; past the last finite bound, that bound. None if empty."""
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
