"""Prometheus metrics: after known traffic (REST and gRPC, in process), the counters and
histograms say exactly that."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.server import oip_body, value
from tests.inprocess import InProcess, in_process


@pytest.fixture(scope="module")
def mserver(tmp_path_factory: pytest.TempPathFactory, mlp_package: Path) -> Iterator[InProcess]:
    with in_process(tmp_path_factory.mktemp("metrics") / "store", [mlp_package]) as served:
        yield served


def test_counters_and_histograms_match_the_traffic_sent(mserver: InProcess) -> None:
    before = mserver.scrape()
    x2 = np.ones((2, 32), np.float32)
    for _ in range(5):
        r = mserver.http.post("/v2/models/mlp/infer", json=oip_body("input", x2))
        assert r.status_code == 200
    for _ in range(3):
        r = mserver.http.post("/v1/models/mlp:predict", json={"instances": [[0.1] * 32]})
        assert r.status_code == 200
    with triton_grpc.InferenceServerClient(mserver.grpc_address) as client:
        for _ in range(2):
            tensor = triton_grpc.InferInput("input", [1, 32], "FP32")
            tensor.set_data_from_numpy(np.zeros((1, 32), np.float32))
            client.infer("mlp", [tensor])
    bad = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "INT64", "data": [1] * 32}]}
    for _ in range(2):
        assert mserver.http.post("/v2/models/mlp/infer", json=bad).status_code == 400
    unknown = mserver.http.post("/v2/models/nope/infer", json=oip_body("input", x2))
    assert unknown.status_code == 404

    def promote(model: str) -> int:
        path = f"/models/{model}/default"
        return mserver.admin.put(path, json={"version": 1}, headers=mserver.auth).status_code

    assert promote("mlp") == 200
    assert promote("nope") == 404
    after = mserver.scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    mlp = {"model": "mlp", "version": "1"}
    assert delta("torchport_requests_total", **mlp, protocol="oip_rest", outcome="ok") == 5
    assert delta("torchport_requests_total", **mlp, protocol="kserve_v1", outcome="ok") == 3
    assert delta("torchport_requests_total", **mlp, protocol="oip_grpc", outcome="ok") == 2
    assert (
        delta("torchport_requests_total", **mlp, protocol="oip_rest", outcome="invalid_input") == 2
    )
    # An unknown model name is not a label value: cardinality stays bounded.
    nope = {"model": "", "version": "", "protocol": "oip_rest", "outcome": "not_found"}
    assert delta("torchport_requests_total", **nope) == 1
    assert delta("torchport_request_duration_seconds_count", **mlp, protocol="oip_rest") == 7
    # Only valid requests reach the batcher: 5 of 2 rows, 3 + 2 of 1 row.
    assert delta("torchport_queue_wait_seconds_count", **mlp) == 10
    assert delta("torchport_batch_size_sum", **mlp) == 15
    assert delta("torchport_inference_duration_seconds_count", **mlp) == delta(
        "torchport_batch_size_count", **mlp
    )
    assert delta("torchport_management_operations_total", operation="promote", outcome="ok") == 1
    assert (
        delta("torchport_management_operations_total", operation="promote", outcome="not_found")
        == 1
    )
    assert value(after, "torchport_queue_depth", **mlp) == 0
    assert value(after, "torchport_workers", **mlp, kind="thread") >= 1
    assert value(after, "torchport_model_load_seconds", **mlp) > 0


ROOT = Path(__file__).resolve().parents[2]


def test_the_grafana_dashboard_and_scrape_config_use_what_the_server_exports(
    mserver: InProcess,
) -> None:
    import json
    import re

    import yaml

    text = mserver.http.get("/metrics").text
    families = {f.name for f in text_string_to_metric_families(text)}
    dashboard = json.loads((ROOT / "deploy/grafana/torchport.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        for name in re.findall(r"torchport_[a-z_]+", expr):
            family = re.sub(r"_(bucket|sum|count|total)$", "", name)
            assert family in families, f"{name} in {expr!r} is not exported"
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8080"]
