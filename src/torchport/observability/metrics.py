"""Prometheus metrics of one server: requests, latencies, batches, queues, workers, loads,
management operations.

Transport-neutral: the inference and management services record here; a transport only
serves `exposition()`. Names follow Prometheus conventions (`torchport_` prefix, seconds,
`_total` counters); labels are bounded: models and versions the store holds (an unknown
model is counted as model ""), protocols, outcome codes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class VersionGauges:
    """What a loaded version reports at scrape time."""

    model: str
    version: int
    queued: int
    running: int
    worker_kind: str
    workers: int
    handler_metrics: tuple[tuple[str, str, str, float], ...] = ()
    """What the version's handler recorded itself (a TorchServe handler's
    `context.metrics`): (name, unit, dimensions as `Name:value,…`, value)."""
    resident_bytes: int = 0
    last_used: float = 0.0
    """Unix time of the last request that took the version (or of its load)."""
    residency: str = "always"
    device: str = "cpu"
    precision: str = "fp32"


class DeviceGauges(Protocol):
    """What a GPU reports at scrape time (`runtime.devices.DeviceFigures` is one)."""

    @property
    def index(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def total_bytes(self) -> int: ...
    @property
    def used_bytes(self) -> int: ...
    @property
    def allocated_bytes(self) -> int: ...
    @property
    def reserved_bytes(self) -> int: ...
    @property
    def utilization(self) -> float | None: ...


@dataclass(frozen=True)
class RolloutGauges:
    """What a running rollout reports at scrape time (its figures in total)."""

    model: str
    candidate: int
    mode: str
    share: float
    versions: tuple[tuple[int, str, int, int, float | None], ...]
    """(version, role, requests, errors, p99 seconds over the window)."""
    outputs: tuple[tuple[str, str, float | None, float], ...]
    """(output, measure, agreement, max abs difference)."""
    compared: int
    dropped: int


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "torchport_requests",
            "Inference requests answered, by outcome (ok, or the error code).",
            ["model", "version", "protocol", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "torchport_request_duration_seconds",
            "Time from a request reaching its route (read, decoded, run, encoded) to its answer.",
            ["model", "version", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "torchport_queue_wait_seconds",
            "Time a request waited for its batch to start.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "torchport_inference_duration_seconds",
            "Time a batch took to run (pre-processing, model, post-processing).",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "torchport_batch_size",
            "Rows in each batch run.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.load_seconds = Gauge(
            "torchport_model_load_seconds",
            "Time the version took to load (verify, unpack, build, warm up).",
            ["model", "version"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "torchport_worker_restarts",
            "Worker processes that died and were replaced.",
            ["model", "version"],
            registry=r,
        )
        self.evictions = Counter(
            "torchport_evictions",
            "On-demand versions evicted to make room within max_resident_bytes.",
            ["model", "version"],
            registry=r,
        )
        self.on_demand_loads = Counter(
            "torchport_on_demand_loads",
            "Loads of an on-demand version (its first request, or one after an eviction).",
            ["model", "version"],
            registry=r,
        )
        self.resident_budget = Gauge(
            "torchport_resident_budget_bytes",
            "max_resident_bytes: what loaded versions may hold together (0: no limit).",
            registry=r,
        )
        self.management = Counter(
            "torchport_management_operations",
            "Management operations, by outcome (ok, or the error code).",
            ["operation", "outcome"],
            registry=r,
        )

    def watch(self, versions: Callable[[], Iterable[VersionGauges]]) -> None:
        """Report queue depth and workers of the loaded versions at each scrape."""
        self.registry.register(_VersionCollector(versions))

    def watch_devices(self, devices: Callable[[], Iterable[DeviceGauges]]) -> None:
        """Report the GPUs' memory and utilisation at each scrape."""
        self.registry.register(_DeviceCollector(devices))

    def watch_rollouts(self, rollouts: Callable[[], Iterable[RolloutGauges]]) -> None:
        """Report the running rollouts' figures at each scrape."""
        self.registry.register(_RolloutCollector(rollouts))

    def observer(self, model: str, version: int) -> BatchObserver:
        return BatchObserver(self, model, str(version))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class BatchObserver:
    """Records a version's batches and waits; the batcher calls it (no prometheus there)."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._batch = metrics.batch_rows.labels(model, version)
        self._inference = metrics.inference_seconds.labels(model, version)
        self._queue = metrics.queue_seconds.labels(model, version)

    def batch(self, rows: int, seconds: float) -> None:
        self._batch.observe(rows)
        self._inference.observe(seconds)

    def waited(self, seconds: float) -> None:
        self._queue.observe(seconds)


class _VersionCollector(Collector):
    def __init__(self, versions: Callable[[], Iterable[VersionGauges]]) -> None:
        self._versions = versions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queued = GaugeMetricFamily(
            "torchport_queue_depth", "Requests waiting for a batch.", labels=["model", "version"]
        )
        running = GaugeMetricFamily(
            "torchport_batches_running", "Batches running now.", labels=["model", "version"]
        )
        workers = GaugeMetricFamily(
            "torchport_workers",
            "Workers of each loaded version (threads, or live worker processes).",
            labels=["model", "version", "kind"],
        )
        handler = GaugeMetricFamily(
            "torchport_handler_metric",
            "Metrics a version's handler records itself (a TorchServe handler's "
            "context.metrics): the latest value of a gauge, the running sum of a counter.",
            labels=["model", "version", "metric", "unit", "dimensions"],
        )
        resident = GaugeMetricFamily(
            "torchport_resident_bytes",
            "Memory a loaded version holds (its tensors, mapped weights included), by its "
            "residency policy (always, on_demand).",
            labels=["model", "version", "residency"],
        )
        last_used = GaugeMetricFamily(
            "torchport_last_used_timestamp_seconds",
            "When a request last took the loaded version (Unix time).",
            labels=["model", "version"],
        )
        placed = GaugeMetricFamily(
            "torchport_version_info",
            "Where and how each loaded version runs (always 1).",
            labels=["model", "version", "device", "precision"],
        )
        for v in self._versions():
            labels = [v.model, str(v.version)]
            queued.add_metric(labels, v.queued)
            running.add_metric(labels, v.running)
            workers.add_metric([*labels, v.worker_kind], v.workers)
            resident.add_metric([*labels, v.residency], v.resident_bytes)
            last_used.add_metric(labels, v.last_used)
            placed.add_metric([*labels, v.device, v.precision], 1)
            for name, unit, dimensions, value in v.handler_metrics:
                handler.add_metric([*labels, name, unit, dimensions], value)
        yield from (queued, running, workers, handler, resident, last_used, placed)


class _DeviceCollector(Collector):
    def __init__(self, devices: Callable[[], Iterable[DeviceGauges]]) -> None:
        self._devices = devices

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["device", "name"]
        total = GaugeMetricFamily(
            "torchport_gpu_memory_total_bytes", "The GPU's memory.", labels=labels
        )
        used = GaugeMetricFamily(
            "torchport_gpu_memory_used_bytes",
            "GPU memory in use by every process (the driver's count).",
            labels=labels,
        )
        allocated = GaugeMetricFamily(
            "torchport_gpu_memory_allocated_bytes",
            "GPU memory held by this server's tensors.",
            labels=labels,
        )
        reserved = GaugeMetricFamily(
            "torchport_gpu_memory_reserved_bytes",
            "GPU memory held by this server's caching allocator (tensors and cache).",
            labels=labels,
        )
        utilization = GaugeMetricFamily(
            "torchport_gpu_utilization_ratio",
            "Share of the last sample period a kernel ran on the GPU (NVML).",
            labels=labels,
        )
        for d in self._devices():
            names = [f"cuda:{d.index}", d.name]
            total.add_metric(names, d.total_bytes)
            used.add_metric(names, d.used_bytes)
            allocated.add_metric(names, d.allocated_bytes)
            reserved.add_metric(names, d.reserved_bytes)
            if d.utilization is not None:
                utilization.add_metric(names, d.utilization)
        yield from (total, used, allocated, reserved, utilization)


class _RolloutCollector(Collector):
    def __init__(self, rollouts: Callable[[], Iterable[RolloutGauges]]) -> None:
        self._rollouts = rollouts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        share = GaugeMetricFamily(
            "torchport_rollout_share",
            "Share of a model's traffic its running rollout's candidate answers (canary) or "
            "sees (shadow).",
            labels=["model", "candidate", "mode"],
        )
        requests = GaugeMetricFamily(
            "torchport_rollout_requests",
            "Requests of each side of a running rollout, and its errors, since it started.",
            labels=["model", "version", "role", "outcome"],
        )
        p99 = GaugeMetricFamily(
            "torchport_rollout_p99_seconds",
            "p99 latency of each side of a running rollout over its window.",
            labels=["model", "version", "role"],
        )
        agreement = GaugeMetricFamily(
            "torchport_rollout_agreement",
            "Share of compared rows on which the candidate's output agrees with the default's.",
            labels=["model", "output", "measure"],
        )
        difference = GaugeMetricFamily(
            "torchport_rollout_max_abs_difference",
            "Largest absolute difference between the candidate's output and the default's.",
            labels=["model", "output"],
        )
        compared = GaugeMetricFamily(
            "torchport_rollout_comparisons",
            "Comparisons of a running rollout, made and dropped (queue full).",
            labels=["model", "outcome"],
        )
        for r in self._rollouts():
            share.add_metric([r.model, str(r.candidate), r.mode], r.share)
            for version, role, count, errors, p99_s in r.versions:
                labels = [r.model, str(version), role]
                requests.add_metric([*labels, "ok"], count - errors)
                requests.add_metric([*labels, "error"], errors)
                if p99_s is not None:
                    p99.add_metric(labels, p99_s)
            for output, measure, agreed, max_abs in r.outputs:
                if agreed is not None:
                    agreement.add_metric([r.model, output, measure], agreed)
                difference.add_metric([r.model, output], max_abs)
            compared.add_metric([r.model, "made"], r.compared)
            compared.add_metric([r.model, "dropped"], r.dropped)
        yield from (share, requests, p99, agreement, difference, compared)
