"""Models kept resident within a memory budget: on-demand models load on their first
request, the least recently used idle one is evicted when a load needs room, and one a
request holds never is."""

from __future__ import annotations

import gc
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MODEL_BYTES
from tests.e2e.server import value
from tests.inprocess import InProcess, in_process
from torchport.service.residency import Residency

BUDGET = 10 * MODEL_BYTES + MODEL_BYTES // 2  # room for ten models, not eleven


def test_victims_are_the_least_recently_used_idle_on_demand_versions() -> None:
    held = Residency(budget=300)
    for i, policy in enumerate(["on_demand", "always", "on_demand", "on_demand"]):
        held.admit((f"m{i}", 1), 100 if i else 50, policy)  # type: ignore[arg-type]
    # 350 held: 100 more needs 150 freed; m0 (50) and m2 (100) are the oldest on demand.
    idle = {("m0", 1), ("m1", 1), ("m2", 1), ("m3", 1)}
    assert held.victims(100, idle) == [("m0", 1), ("m2", 1)]
    held.touch(("m0", 1))  # used now: m2 and m3 go first
    assert held.victims(100, idle) == [("m2", 1), ("m3", 1)]
    assert held.victims(100, idle - {("m2", 1)}) == [("m3", 1), ("m0", 1)]
    assert held.victims(1000, idle) is None  # an always version is never a victim
    assert Residency(budget=None).victims(10**12, set()) == []


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fifty_models: list[Path]
) -> Iterator[InProcess]:
    # One server for the tests below: each sets up the recency it checks itself. As a
    # server does after start-up (`server.py`), what this process holds already is left
    # out of the full collections each eviction runs: else they scan the whole test
    # session's objects, and take most of the time.
    gc.collect()
    gc.freeze()
    try:
        yield from _residency_server(tmp_path_factory, fifty_models)
    finally:
        gc.unfreeze()


def _residency_server(
    tmp_path_factory: pytest.TempPathFactory, fifty_models: list[Path]
) -> Iterator[InProcess]:
    with in_process(
        tmp_path_factory.mktemp("residency") / "store",
        fifty_models,
        max_resident_bytes=BUDGET,
        residency="on_demand",
        load_wait_s=10.0,
    ) as served:
        yield served


def body(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x.tolist()}]}


def infer(server: InProcess, index: int) -> np.ndarray:
    x = np.arange(4, dtype=np.float32) + index
    answer = server.http.post(f"/v2/models/s{index:02d}/infer", json=body(x))
    assert answer.status_code == 200, answer.text
    got = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32)
    np.testing.assert_allclose(got, x * (index + 1))
    return got


def resident(server: InProcess) -> list[str]:
    return [model for model, _ in server.registry.residency.order()]


def test_fifty_on_demand_models_answer_correctly_within_a_budget_of_ten(
    server: InProcess,
) -> None:
    registry = server.registry
    assert len(resident(server)) <= 10  # uploads evicted the oldest as they came
    assert server.http.get("/v2/health/ready").status_code == 200
    assert server.http.get("/v2/models/s00/ready").status_code == 200  # loads on request
    order = list(range(50)) * 3
    random.Random(7).shuffle(order)
    for index in order:
        infer(server, index)
        assert registry.residency.used <= BUDGET
        assert len(resident(server)) <= 10
    samples = server.scrape()
    evicted = sum(v for k, v in samples.items() if k[0] == "torchport_evictions_total")
    loads = sum(v for k, v in samples.items() if k[0] == "torchport_on_demand_loads_total")
    assert evicted >= 100
    assert loads >= 100
    assert value(samples, "torchport_resident_budget_bytes") == BUDGET
    held = {
        dict(k[1])["model"]: v for k, v in samples.items() if k[0] == "torchport_resident_bytes"
    }
    assert sorted(held) == sorted(resident(server))
    assert set(held.values()) == {MODEL_BYTES}


def test_eviction_is_least_recently_used(server: InProcess) -> None:
    for index in range(10):
        infer(server, index)
    assert resident(server) == [f"s{i:02d}" for i in range(10)]
    infer(server, 3)  # s03 is now the most recently used
    infer(server, 20)
    assert resident(server) == [f"s{i:02d}" for i in (1, 2, 4, 5, 6, 7, 8, 9, 3, 20)]
    infer(server, 21)
    assert "s01" not in resident(server)
    assert "s03" in resident(server)


def test_a_model_in_use_is_never_evicted(server: InProcess) -> None:
    for index in range(10):
        infer(server, index)
    held = server.registry.acquire_loaded("s00", None)  # a request in progress on s00
    assert held is not None
    try:
        for index in range(10, 25):
            infer(server, index)
        assert "s00" in resident(server)
    finally:
        server.registry.release(held)
    infer(server, 30)
    infer(server, 31)
    assert "s00" not in resident(server)


def test_a_load_with_no_room_waits_then_answers_503(
    tmp_path: Path, fifty_models: list[Path]
) -> None:
    with in_process(
        tmp_path / "store",
        fifty_models[:2],
        max_resident_bytes=MODEL_BYTES + MODEL_BYTES // 2,
        residency="on_demand",
        load_wait_s=3.0,  # loads on a busy machine take their time; the refusal waits this
    ) as served:
        infer(served, 0)
        held = served.registry.acquire_loaded("s00", None)
        try:
            answer = served.http.post("/v2/models/s01/infer", json=body(np.zeros(4)))
            assert answer.status_code == 503
            error = answer.json()
            assert error["field"] == "model"
            # Why, when the wait for room ends first; else that the wait itself ended.
            assert "max_resident_bytes" in error["error"] or "load_wait_s" in error["error"]
        finally:
            served.registry.release(held)
        infer(served, 1)
        assert resident(served) == ["s01"]
