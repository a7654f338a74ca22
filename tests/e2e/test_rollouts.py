"""Rollouts on a real server under concurrent load: the canary's share, a shadow that
changes nothing a client sees, rules that roll back a failing candidate and promote an
agreeing one, a restart mid-rollout, and `torchport models rollout` driving it all."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import httpx
import pytest

from tests.cli.test_cli import cli
from tests.e2e.server import TOKEN, ServerProcess, upload
from tests.service.test_rollouts import ROWS, _package

CLIENTS = 8


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rollout-packages")
    for name in ("base", "same", "failing", "slow"):
        (root / name).mkdir()
    return {
        "base": _package(root, "base"),
        "same": _package(root, "same"),
        "failing": _package(root, "failing", fail=True),
        "slow": _package(root, "slow", slow=0.3),
    }


@pytest.fixture
def server(tmp_path: Path, packages: dict[str, Path]) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "store", [packages["base"]]).start()
    try:
        for name in ("same", "failing"):  # versions 2 and 3
            upload(proc, packages[name], "clf")
        yield proc
    finally:
        proc.stop()


def _models(server: ServerProcess, *args: str) -> tuple[int, str, str]:
    env = {"TORCHPORT_TOKEN": TOKEN, "TORCHPORT_MANAGEMENT_URL": server.management_url}
    with mock.patch.dict(os.environ, env):
        done = cli("models", "rollout", *args)
    return done.returncode, done.stdout, done.stderr


def _load(
    server: ServerProcess, requests: int, headers: dict[str, str] | None = None
) -> list[tuple[int, str, bytes]]:
    """`requests` inference requests from CLIENTS concurrent clients: (status, version, body)."""

    def one(i: int) -> tuple[int, str, bytes]:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8],
                            "data": ROWS[i % len(ROWS)].tolist()}]}  # fmt: skip
        answer = client.post(f"{server.url}/v2/models/clf/infer", json=body, headers=headers)
        return answer.status_code, answer.headers.get("x-model-version", ""), answer.content

    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, range(requests)))


def _status(server: ServerProcess) -> dict[str, object]:
    code, stdout, stderr = _models(server, "status", "clf", "--json")
    assert code == 0, stderr
    return json.loads(stdout)


def test_a_canary_gets_its_share_under_concurrent_load(server: ServerProcess) -> None:
    code, stdout, stderr = _models(server, "start", "clf", "--candidate", "2", "--share", "0.2",
                                   "--report-only")  # fmt: skip
    assert code == 0, stderr
    assert "canary of v2 against v1, share 0.2 (report only)" in stdout
    answered = Counter(version for status, version, _ in _load(server, 1000) if status == 200)
    assert sum(answered.values()) == 1000
    assert 0.17 <= answered["2"] / 1000 <= 0.23
    code, stdout, _ = _models(server, "status", "clf")
    assert "running" in stdout
    assert "agreement 100.00%" in stdout
    assert _models(server, "stop", "clf")[1].strip() == "clf: rollout of v2 stopped"


def test_a_full_shadow_changes_nothing_a_client_sees(server: ServerProcess) -> None:
    before = _load(server, 200)
    assert _models(server, "start", "clf", "--candidate", "3", "--mode", "shadow",
                   "--share", "1", "--report-only")[0] == 0  # fmt: skip
    during = _load(server, 200)
    assert all(status == 200 for status, _, _ in during)  # the failing candidate is a shadow
    assert [body for _, _, body in during] == [body for _, _, body in before]
    assert {version for _, version, _ in during} == {"1"}
    figures = _status(server)["figures"]
    assert figures["versions"]["3"]["total"]["errors"] > 0  # it failed, out of sight


def test_rules_roll_back_a_failing_candidate_and_promote_an_agreeing_one(
    server: ServerProcess,
) -> None:
    rules = json.dumps({"min_requests": 100_000, "check_every_s": 0.2,
                        "min_requests_to_roll_back": 40})  # fmt: skip
    assert _models(server, "start", "clf", "--candidate", "3", "--share", "0.2",
                   "--rules", rules)[0] == 0  # fmt: skip
    failed = 0
    for _ in range(20):
        failed += sum(1 for status, _, _ in _load(server, 100) if status != 200)
        if _status(server)["rollout"]["state"] != "running":
            break
    rollout = _status(server)["rollout"]
    assert rollout["state"] == "rolled_back", rollout
    assert failed <= 0.2 * 0.2 * 2000  # at most its share of its share of what was sent
    assert all(status == 200 for status, _, _ in _load(server, 100))
    promote = json.dumps({"min_requests": 150, "check_every_s": 0.2})
    assert _models(server, "start", "clf", "--candidate", "2", "--share", "0.3",
                   "--rules", promote)[0] == 0  # fmt: skip
    deadline = time.monotonic() + 60
    while _status(server)["rollout"]["state"] == "running" and time.monotonic() < deadline:
        _load(server, 100)
    decided = _status(server)["rollout"]
    assert decided["state"] == "promoted"
    assert decided["decision"]["by"] == "rules"
    info = httpx.get(f"{server.management_url}/models/clf", headers=server.auth).json()
    assert info["default"] == 2


def test_a_restart_mid_rollout_resumes_it(server: ServerProcess) -> None:
    assert _models(server, "start", "clf", "--candidate", "2", "--share", "0.5",
                   "--report-only")[0] == 0  # fmt: skip
    server.stop()
    server.start()
    assert _status(server)["rollout"]["state"] == "running"
    assert {version for _, version, _ in _load(server, 40)} == {"1", "2"}


def test_front_end_processes_keep_sticky_callers_on_one_side(
    tmp_path: Path, packages: dict[str, Path]
) -> None:
    proc = ServerProcess(tmp_path / "store", [packages["base"]], TORCHPORT_FRONTENDS="2").start()
    try:
        upload(proc, packages["same"], "clf")
        assert _models(proc, "start", "clf", "--candidate", "2", "--share", "0.5",
                       "--sticky-header", "X-User", "--report-only")[0] == 0  # fmt: skip
        seen: dict[str, set[str]] = {}
        for user in (f"user-{i}" for i in range(12)):
            for status, version, _ in _load(proc, 16, {"X-User": user}):
                assert status == 200
                seen.setdefault(user, set()).add(version)
        assert all(len(versions) == 1 for versions in seen.values()), seen
        assert {v for versions in seen.values() for v in versions} == {"1", "2"}
    finally:
        proc.stop()


def test_a_shadow_never_makes_a_client_wait_for_it(
    tmp_path: Path, packages: dict[str, Path]
) -> None:
    proc = ServerProcess(tmp_path / "store", [packages["base"]]).start()
    try:
        upload(proc, packages["slow"], "clf")  # 0.3 s a call
        assert _models(proc, "start", "clf", "--candidate", "2", "--mode", "shadow",
                       "--share", "1", "--report-only")[0] == 0  # fmt: skip
        started = time.monotonic()
        answers = _load(proc, 400)
        elapsed = time.monotonic() - started
        assert all(status == 200 for status, _, _ in answers)
        assert elapsed < 20  # 400 shadows at 0.3 s each would take 120 s in line
        figures = _status(proc)["figures"]
        assert figures["dropped"] > 0  # the queue filled: shadows dropped, not waited for
    finally:
        proc.stop()
