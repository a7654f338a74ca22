"""The dashboard's live figures: rates, quantiles and means read off the real registry."""

from __future__ import annotations

import pytest

from torchport.observability.live import LiveStats, quantile
from torchport.observability.metrics import Metrics, VersionGauges


def test_quantile_interpolates_within_buckets_like_prometheus() -> None:
    buckets = {0.1: 10.0, 0.2: 30.0, 0.5: 40.0, float("inf"): 40.0}
    assert quantile(0.25, buckets) == pytest.approx(0.1)  # rank 10: top of the first bucket
    assert quantile(0.5, buckets) == pytest.approx(0.15)  # rank 20: halfway through (0.1, 0.2]
    assert quantile(0.99, buckets) == pytest.approx(0.2 + 0.3 * (39.6 - 30) / 10)
    assert quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    # Past the last finite bound: that bound, as histogram_quantile answers.
    assert quantile(0.99, {0.1: 1.0, float("inf"): 10.0}) == pytest.approx(0.1)


def test_points_are_rates_and_quantiles_over_each_interval() -> None:
    metrics = Metrics()
    metrics.watch(lambda: [VersionGauges("mlp", 2, queued=3, running=1, worker_kind="thread",
                                         workers=2)])  # fmt: skip
    live = LiveStats(metrics.registry, interval=2.0, keep=3)
    ok = metrics.requests.labels("mlp", "1", "rest", "ok")
    seconds = metrics.request_seconds.labels("mlp", "1", "rest")
    live.sample(now=100.0)  # the baseline: no point yet
    assert live.series("mlp") == {}

    for _ in range(16):
        ok.inc()
        seconds.observe(0.003)  # in (2.5 ms, 5 ms]
    metrics.requests.labels("mlp", "1", "grpc", "invalid_input").inc(4)
    metrics.request_seconds.labels("mlp", "1", "grpc").observe(0.0004)
    batch = metrics.observer("mlp", 1)
    batch.batch(6, 0.01)
    batch.batch(2, 0.01)
    live.sample(now=102.0)

    series = live.series("mlp")
    assert set(series) == {"1", "2"}  # version 2 is seen through its gauges alone
    one = series["1"]
    assert one["t"] == [102.0]
    assert one["rps"] == [pytest.approx(20 / 2.0)]
    assert one["error_rate"] == [pytest.approx(4 / 20)]
    assert one["batch_size"] == [pytest.approx(4.0)]
    assert 2.5 < one["p50_ms"][0] <= 5.0
    assert 2.5 < one["p99_ms"][0] <= 5.0
    assert series["2"]["queue_depth"] == [3.0]
    assert series["2"]["rps"] == [0.0]
    assert series["2"]["p50_ms"] == [None]  # no requests: no latency, not zero

    live.sample(now=104.0)  # a quiet interval: rates fall back to zero
    assert live.series("mlp")["1"]["rps"][-1] == 0.0
    assert live.series("mlp")["1"]["error_rate"][-1] is None
    for t in (106.0, 108.0):
        live.sample(now=t)
    assert live.series("mlp")["1"]["t"] == [104.0, 106.0, 108.0]  # keeps the last three
    latest = {(row["model"], row["version"]): row for row in live.latest()}
    assert set(latest) == {("mlp", 1), ("mlp", 2)}
    assert latest["mlp", 1]["t"] == 108.0


def test_requests_for_unknown_models_are_left_out() -> None:
    metrics = Metrics()
    live = LiveStats(metrics.registry)
    live.sample(now=1.0)
    metrics.requests.labels("", "", "rest", "not_found").inc()
    live.sample(now=3.0)
    assert live.latest() == []
