"""`context.metrics`: the metrics a handler adds, kept per model in memory.

The methods and arguments are TorchServe's (`add_time`, `add_counter`, `add_size`,
`add_percent`, `add_error`, `add_metric`, `get_metric`, `add_metric_to_cache`); each
metric keeps its latest value (gauges) or its running sum (counters, histograms: the sum
and count) per set of dimension values. `snapshot()` reads them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from torchport.runtime.torchserve.ts.metrics.dimension import Dimension
from torchport.runtime.torchserve.ts.metrics.metric_type_enum import MetricTypes


@dataclass
class Metric:
    name: str
    unit: str
    dimension_names: list[str]
    metric_type: MetricTypes
    values: dict[tuple[str, ...], float] = field(default_factory=dict)
    counts: dict[tuple[str, ...], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_or_update(
        self, value: float, dimension_values: Sequence[str] = (), request_id: str = ""
    ) -> None:
        key = tuple(str(v) for v in dimension_values)
        with self._lock:
            if self.metric_type is MetricTypes.GAUGE:
                self.values[key] = float(value)
            else:
                self.values[key] = self.values.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def update(self, value: float) -> None:
        self.add_or_update(value)


class MetricsCache:
    """The metrics of one model's handler."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.request_ids: dict[int, str] | None = None
        self._metrics: dict[tuple[str, MetricTypes], Metric] = {}
        self._lock = threading.Lock()

    def set_request_ids(self, request_ids: dict[int, str] | str) -> None:
        self.request_ids = request_ids if isinstance(request_ids, dict) else {0: request_ids}

    def add_metric_to_cache(
        self,
        metric_name: str,
        unit: str,
        dimension_names: Sequence[str] = (),
        metric_type: MetricTypes = MetricTypes.COUNTER,
    ) -> Metric:
        key = (metric_name, metric_type)
        with self._lock:
            metric = self._metrics.get(key)
            if metric is None:
                metric = Metric(metric_name, unit, list(dimension_names), metric_type)
                self._metrics[key] = metric
            return metric

    def get_metric(
        self, metric_name: str, metric_type: MetricTypes = MetricTypes.COUNTER
    ) -> Metric:
        with self._lock:
            metric = self._metrics.get((metric_name, metric_type))
        if metric is None:
            raise KeyError(f"metric {metric_name!r} ({metric_type.value}) is not in the cache")
        return metric

    def add_metric(
        self,
        name: str,
        value: float,
        unit: str,
        idx: str | None = None,
        dimensions: Sequence[Dimension] | None = None,
        metric_type: MetricTypes = MetricTypes.COUNTER,
    ) -> None:
        dims = [*(dimensions or []), Dimension("ModelName", self.model_name)]
        metric = self.add_metric_to_cache(name, unit, [d.name for d in dims], metric_type)
        metric.add_or_update(value, [d.value for d in dims])

    def add_counter(
        self,
        name: str,
        value: float,
        idx: str | None = None,
        dimensions: Sequence[Dimension] | None = None,
    ) -> None:
        self.add_metric(name, value, "count", idx, dimensions, MetricTypes.COUNTER)

    def add_time(
        self,
        name: str,
        value: float,
        idx: str | None = None,
        unit: str = "ms",
        dimensions: Sequence[Dimension] | None = None,
        metric_type: MetricTypes = MetricTypes.GAUGE,
    ) -> None:
        self.add_metric(name, value, unit, idx, dimensions, metric_type)

    def add_size(
        self,
        name: str,
        value: float,
        idx: str | None = None,
        unit: str = "MB",
        dimensions: Sequence[Dimension] | None = None,
        metric_type: MetricTypes = MetricTypes.GAUGE,
    ) -> None:
        self.add_metric(name, value, unit, idx, dimensions, metric_type)

    def add_percent(
        self,
        name: str,
        value: float,
        idx: str | None = None,
        dimensions: Sequence[Dimension] | None = None,
        metric_type: MetricTypes = MetricTypes.GAUGE,
    ) -> None:
        self.add_metric(name, value, "percent", idx, dimensions, metric_type)

    def add_error(
        self, name: str, value: float, dimensions: Sequence[Dimension] | None = None
    ) -> None:
        self.add_metric(name, value, "", None, dimensions, MetricTypes.COUNTER)

    def recorded(self) -> list[tuple[str, str, str, float]]:
        """Every value: (name, unit, `Name:value,…` of its dimensions, value)."""
        with self._lock:
            metrics = list(self._metrics.values())
        out = []
        for m in metrics:
            for key, value in list(m.values.items()):
                dims = ",".join(f"{n}:{v}" for n, v in zip(m.dimension_names, key, strict=False))
                out.append((m.name, m.unit, dims, value))
        return out

    def snapshot(self) -> dict[str, dict[tuple[str, ...], float]]:
        """Each metric's values by dimension values (`name`, or `name:type` when one name
        has several types)."""
        with self._lock:
            metrics = list(self._metrics.values())
        return {m.name: dict(m.values) for m in metrics}
