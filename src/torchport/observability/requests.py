"""The one place an inference request is counted: its metrics and its log line, once,
whatever its protocol and however it ends.

A transport opens `RequestCounter.track` around all it does for a request (reading the
body, decoding, inference, encoding) and maps errors to its status codes outside it; the
data plane names the version that answered (`answered`). A request refused before it
reached a model (a bad body, an unknown model) is counted all the same, by its error code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType

from prometheus_client import Counter as Series
from prometheus_client import Histogram

from torchport.errors import TorchportError
from torchport.observability.logs import request_id, requests_log
from torchport.observability.metrics import Metrics

Labels = Callable[[str, int | None], tuple[str, int | None]]
"""A request's model and version as metric labels: those the server holds, else ""/None
(labels stay bounded whatever names clients send)."""


@dataclass
class Tracked:
    """The request being counted: what it asked for, then what answered it."""

    protocol: str
    model: str = ""
    version: int | None = None
    known: bool = False
    """The model and version are those that answered (bounded already: no look-up)."""

    def answered(self, model: str, version: int) -> None:
        self.model, self.version, self.known = model, version, True


_current: ContextVar[Tracked | None] = ContextVar("torchport_tracked", default=None)


def tracked() -> Tracked | None:
    """The request the running task counts, if a transport tracks it."""
    return _current.get()


class Counter:
    """Opens `track` around a request and hands its outcome to `count`."""

    def track(self, protocol: str, model: str = "", version: int | None = None) -> _Tracking:
        """Count the request run inside: outcome `ok`, or the code of the torchport error
        it raised (`internal` for any other exception). A cancelled request (the client went
        away) is not counted."""
        return _Tracking(self, Tracked(protocol, model, version))

    def count(self, item: Tracked, outcome: str, seconds: float) -> None:
        raise NotImplementedError


class _Tracking:
    """`Counter.track`'s block (a class: a generator-based context manager costs a small
    request twice as much)."""

    __slots__ = ("counter", "item", "started", "token")

    def __init__(self, counter: Counter, item: Tracked) -> None:
        self.counter = counter
        self.item = item

    def __enter__(self) -> Tracked:
        self.token = _current.set(self.item)
        self.started = time.perf_counter()
        return self.item

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _current.reset(self.token)
        if kind is None:
            outcome = "ok"
        elif isinstance(exc, TorchportError):
            outcome = exc.code
        elif isinstance(exc, Exception):
            outcome = "internal"
        else:
            return  # cancelled: the client went away
        self.counter.count(self.item, outcome, time.perf_counter() - self.started)


class RequestCounter(Counter):
    """Counts into the server's metrics and writes the request's log line."""

    def __init__(self, metrics: Metrics, labels: Labels) -> None:
        self.metrics = metrics
        self._labels = labels
        # Each series' children, looked up once: prometheus_client's `labels()` takes a
        # lock and checks its arguments on every call. Bounded as the labels are.
        self._series: dict[tuple[str, str, str, str], tuple[Series, Histogram]] = {}

    def count(
        self, item: Tracked, outcome: str, seconds: float, request: str | None = None
    ) -> None:
        """Count one request: `request` is its id when it was handled elsewhere (a front
        end), else the running task's."""
        model, version = (
            (item.model, item.version) if item.known else self._labels(item.model, item.version)
        )
        labels = (model, "" if version is None else str(version), item.protocol)
        key = (*labels, outcome)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (
                self.metrics.requests.labels(*key),
                self.metrics.request_seconds.labels(*labels),
            )
        series[0].inc()
        series[1].observe(seconds)
        if requests_log.isEnabledFor(logging.INFO):
            requests_log.info(
                "request",
                extra={
                    "request_id": request or request_id.get(),
                    "model": labels[0],
                    "version": labels[1],
                    "protocol": item.protocol,
                    "outcome": outcome,
                    "duration_ms": round(seconds * 1000, 3),
                },
            )
