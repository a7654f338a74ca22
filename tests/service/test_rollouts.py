"""Rollouts: a candidate takes a share of a model's traffic (canary) or a copy of it
(shadow), is compared with the default on the same requests, and is promoted or rolled
back by its rules — the server's real services and apps, in process."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.server import value
from tests.helpers import handler_package
from tests.inprocess import InProcess, in_process

SCORES = """
import numpy as np
from torchport.runtime import Handler as Base

WEIGHTS = np.random.default_rng({seed}).standard_normal((8, 4)).astype(np.float32)


class Handler(Base):
    def __call__(self, inputs):
        x = inputs["x"]
        if {slow}:
            __import__("time").sleep({slow})
        if {fail} and float(x[0, 0]) > 1.2816:  # about one request in ten
            raise RuntimeError("the candidate fails on this input")
        # Row by row: an answer does not depend on the batch it ran in (a BLAS call's
        # bits do), so a client's answer is comparable bit for bit whatever the load.
        return {{"scores": np.stack([row @ WEIGHTS for row in x])}}
"""


def _package(
    root: Path, name: str, *, seed: int = 0, fail: bool = False, width: int = 8, slow: float = 0
) -> Path:
    example = {"x": np.ones((1, width), np.float32)}
    handler = SCORES.format(seed=seed, fail=fail, slow=slow).replace("(8, 4)", f"({width}, 4)")
    return handler_package(root / name, "clf", handler, example=example)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rollouts")
    for name in ("base", "same", "failing", "different", "wide"):
        (root / name).mkdir()
    return {
        "base": _package(root, "base"),
        "same": _package(root, "same"),
        "failing": _package(root, "failing", fail=True),
        "different": _package(root, "different", seed=7),
        "wide": _package(root, "wide", width=9),
    }


@pytest.fixture
def server(tmp_path: Path, versions: dict[str, Path]) -> Iterator[InProcess]:
    with in_process(tmp_path / "store", [versions["base"]]) as served:
        for name in ("same", "failing", "different", "wide"):  # versions 2, 3, 4, 5
            served.management.upload(versions[name], name="clf", actor="test")
        yield served


ROWS = np.random.default_rng(3).standard_normal((2000, 8)).astype(np.float32)


def _infer(server: InProcess, i: int, headers: dict[str, str] | None = None) -> tuple[int, int]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8],
                        "data": ROWS[i % len(ROWS)].tolist()}]}  # fmt: skip
    answer = server.http.post("/v2/models/clf/infer", json=body, headers=headers or {})
    version = int(answer.headers.get("x-model-version", "0"))
    if answer.status_code == 200:
        assert answer.json()["model_version"] == str(version)
    return answer.status_code, version


def _start(server: InProcess, **spec: object) -> dict[str, object]:
    answer = server.admin.post("/models/clf/rollout", json=spec, headers=server.auth)
    assert answer.status_code == 201, answer.text
    return answer.json()["rollout"]


def _rollout(server: InProcess) -> dict[str, object]:
    return server.admin.get("/models/clf/rollout", headers=server.auth).json()


def test_a_canary_takes_its_share_of_requests_and_says_which_version_answered(
    server: InProcess,
) -> None:
    _start(server, candidate=2, mode="canary", share=0.2, rules=None)
    answered = Counter(version for _, version in (_infer(server, i) for i in range(600)))
    assert set(answered) == {1, 2}
    assert abs(answered[2] - 120) <= 1  # every fifth request, evenly spread
    # A request that names a version bypasses the rollout.
    pinned = server.http.post("/v2/models/clf/versions/1/infer", json={
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.0] * 8}]
    })  # fmt: skip
    assert pinned.headers["x-model-version"] == "1"
    figures = _rollout(server)["figures"]
    assert figures["versions"]["2"]["total"]["requests"] == answered[2]
    assert figures["versions"]["1"]["total"]["requests"] == answered[1]


def test_sticky_callers_stay_on_one_version(server: InProcess) -> None:
    _start(server, candidate=2, share=0.5, sticky_header="X-User", rules=None)
    seen: dict[str, set[int]] = {}
    for i in range(200):
        user = f"user-{i % 20}"
        status, version = _infer(server, i, {"X-User": user})
        assert status == 200
        seen.setdefault(user, set()).add(version)
    assert all(len(versions) == 1 for versions in seen.values())
    assert {v for versions in seen.values() for v in versions} == {1, 2}


def test_a_shadow_returns_exactly_the_defaults_answers_and_compares_the_candidate(
    server: InProcess,
) -> None:
    _start(server, candidate=4, mode="shadow", share=1.0, rules=None)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8],
                        "data": ROWS[0].tolist()}]}  # fmt: skip
    alone = server.http.post("/v2/models/clf/versions/1/infer", json=body).json()["outputs"]
    for i in range(60):
        answer = server.http.post("/v2/models/clf/infer", json=body)
        assert answer.status_code == 200
        assert answer.headers["x-model-version"] == "1"
        assert answer.json()["outputs"] == alone
        _infer(server, i)
    deadline = time.monotonic() + 10
    while _rollout(server)["figures"]["compared"] < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    figures = _rollout(server)["figures"]
    assert figures["compared"] >= 100, figures
    assert figures["outputs"]["scores"]["measure"] == "argmax"
    assert figures["outputs"]["scores"]["agreement"] < 0.9  # other weights, other classes
    assert figures["versions"]["4"]["total"]["requests"] >= 100
    assert _rollout(server)["rollout"]["state"] == "running"  # no rules: it only reports
    samples = server.scrape()
    assert value(samples, "torchport_rollout_share", model="clf", candidate="4", mode="shadow") == 1
    made = value(samples, "torchport_rollout_comparisons", model="clf", outcome="made")
    assert made >= 100
    agreed = value(samples, "torchport_rollout_agreement", model="clf", output="scores",
                   measure="argmax")  # fmt: skip
    assert 0 < agreed < 0.9


def test_a_candidate_that_fails_is_rolled_back_by_its_rules(server: InProcess) -> None:
    rules = {"min_requests": 10_000, "check_every_s": 0.1, "min_requests_to_roll_back": 30}
    _start(server, candidate=3, share=0.3, rules=rules)
    failed = 0
    for i in range(1000):
        status, version = _infer(server, i)
        if status != 200:
            failed += 1
            assert version in (0, 3)
        if _rollout(server)["rollout"]["state"] != "running":
            break
    rollout = _rollout(server)["rollout"]
    assert rollout["state"] == "rolled_back"
    assert rollout["decision"]["by"] == "rules"
    assert "error rate" in rollout["decision"]["why"]
    assert failed < 30  # only the candidate's share of its failures reached clients
    assert server.management.get_model("clf").default == 1
    assert all(_infer(server, i)[1] == 1 for i in range(20))
    audit = [e.action for e in server.management.audit("clf", 20)]
    assert "rollout_rolled_back" in audit


def test_a_candidate_that_agrees_is_promoted_by_its_rules(server: InProcess) -> None:
    _start(server, candidate=2, share=0.5, rules={"min_requests": 60, "check_every_s": 0.1})
    deadline = time.monotonic() + 30
    i = 0
    while _rollout(server)["rollout"]["state"] == "running" and time.monotonic() < deadline:
        _infer(server, i)
        i += 1
    rollout = _rollout(server)["rollout"]
    assert rollout["state"] == "promoted"
    assert rollout["decision"]["figures"]["agreement"] == 1.0
    assert server.management.get_model("clf").default == 2


def test_a_rollout_survives_a_restart(tmp_path: Path, versions: dict[str, Path]) -> None:
    with in_process(tmp_path / "store", [versions["base"]]) as served:
        served.management.upload(versions["same"], name="clf", actor="test")
        _start(served, candidate=2, share=0.5, rules=None)
    with in_process(tmp_path / "store", []) as again:
        found = _rollout(again)
        assert found["rollout"]["state"] == "running"
        assert {v for _, v in (_infer(again, i) for i in range(40))} == {1, 2}


@pytest.mark.parametrize(
    ("spec", "status", "field"),
    [
        ({"candidate": 5}, 400, "candidate"),  # another signature
        ({"candidate": 2, "share": 1.5}, 400, "share"),
        ({"candidate": 2, "mode": "blue-green"}, 400, "mode"),
        ({"candidate": 2, "rules": {"outputs": {"nope": "argmax"}}}, 400, "rules.outputs.nope"),
        ({"candidate": 2, "rules": {"min_agreement": 2}}, 400, "rules.min_agreement"),
        ({"candidate": 1}, 409, "candidate"),  # the default already
        ({"candidate": 99}, 404, "version"),
    ],
)
def test_a_bad_rollout_is_a_4xx_naming_the_field(
    server: InProcess, spec: dict[str, object], status: int, field: str
) -> None:
    answer = server.admin.post("/models/clf/rollout", json=spec, headers=server.auth)
    assert answer.status_code == status, answer.text
    assert answer.json()["field"] == field


def test_a_second_rollout_is_a_409_and_ending_one_by_hand_is_audited(server: InProcess) -> None:
    _start(server, candidate=2, rules=None)
    second = server.admin.post("/models/clf/rollout", json={"candidate": 4}, headers=server.auth)
    assert second.status_code == 409
    stopped = server.admin.post("/models/clf/rollout/stop", headers=server.auth)
    assert stopped.json()["rollout"]["state"] == "stopped"
    assert server.admin.post("/models/clf/rollout/stop", headers=server.auth).status_code == 404
    assert server.admin.post("/models/clf/rollout/sideways", headers=server.auth).status_code == 400
    assert "rollout_stopped" in [e.action for e in server.management.audit("clf", 10)]


def test_grpc_answers_name_their_version_and_stick_by_metadata(server: InProcess) -> None:
    import grpc

    from torchport.tensors import to_raw
    from torchport.transports.grpc.convert import pb, stub

    _start(server, candidate=2, share=0.5, sticky_header="x-user", rules=None)
    seen: dict[str, set[str]] = {}
    with grpc.insecure_channel(server.grpc_address) as channel:
        for i in range(60):
            request = pb.ModelInferRequest(model_name="clf")
            request.inputs.add(name="x", datatype="FP32", shape=[1, 8])
            request.raw_input_contents.append(to_raw(ROWS[i : i + 1]))
            user = f"user-{i % 6}"
            reply, call = stub(channel).ModelInfer.with_call(
                request, metadata=(("x-user", user),), timeout=30
            )
            trailing = dict(call.trailing_metadata())
            assert trailing["x-model-version"] == reply.model_version
            seen.setdefault(user, set()).add(reply.model_version)
    assert all(len(v) == 1 for v in seen.values())
    assert {v for versions in seen.values() for v in versions} == {"1", "2"}
