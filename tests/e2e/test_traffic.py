"""Recorded traffic and its replay: a real server records a sample of a model's requests
under concurrent load, and `torchport traffic replay` runs them against other versions —
in process and against the server — with the same report."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.cli.test_cli import cli
from tests.e2e.server import ServerProcess, upload
from tests.e2e.test_rollouts import _load
from tests.service.test_rollouts import _package


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("traffic")
    for name in ("base", "same", "different"):
        (root / name).mkdir()
    packages = [_package(root, "base"), _package(root, "same"), _package(root, "different", seed=7)]
    proc = ServerProcess(root / "store", [packages[0]]).start()
    try:
        for package in packages[1:]:  # versions 2 and 3
            upload(proc, package, "clf")
        yield proc
    finally:
        proc.stop()


def _recording(server: ServerProcess, method: str, body: object = None) -> httpx.Response:
    return httpx.request(method, f"{server.management_url}/models/clf/recording",
                         json=body, headers=server.auth, timeout=60)  # fmt: skip


def _records(server: ServerProcess) -> int:
    files = sorted((server.store / "recordings" / "clf").glob("*.jsonl"))
    return sum(len(f.read_text().splitlines()) for f in files)


def _replay(server: ServerProcess, version: int, *extra: str) -> dict[str, object]:
    out = server.store.parent / f"report-{version}-{len(extra)}.json"
    done = cli("traffic", "replay", "clf", "--version", str(version), "--store",
               str(server.store), "--out", str(out), *extra)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"clf v{version}:" in done.stdout
    return json.loads(out.read_text())


def test_a_recording_made_under_load_replays_the_same_in_process_and_on_the_server(
    server: ServerProcess,
) -> None:
    started = _recording(server, "PUT", {"share": 0.5, "max_per_second": 100_000})
    assert started.status_code == 200, started.text
    answers = _load(server, 400)
    assert all(status == 200 for status, _, _ in answers)
    deadline = time.monotonic() + 20
    while _records(server) < 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _records(server) == 200  # every other request, evenly
    shown = _recording(server, "GET").json()
    assert shown["recorded"] == 200
    assert shown["files"]
    assert _recording(server, "DELETE").json()["recording"] is None

    for version in (2, 3):  # a server answers requests for the versions it has loaded
        loaded = httpx.post(f"{server.management_url}/models/clf/versions/{version}/load",
                            headers=server.auth, timeout=60)  # fmt: skip
        assert loaded.status_code == 200, loaded.text
    same_here, same_there = _replay(server, 2), _replay(server, 2, "--server", server.url)
    other_here, other_there = _replay(server, 3), _replay(server, 3, "--server", server.url)
    for here, there in ((same_here, same_there), (other_here, other_there)):
        assert here["replayed"] == there["replayed"] == 200, (here, there)
        assert here["errors"] == there["errors"] == 0
        assert here["outputs"]["scores"]["agreement"] == there["outputs"]["scores"]["agreement"]
        assert here["outputs"]["scores"]["rows"] == there["outputs"]["scores"]["rows"]
    assert same_here["agreement"] == 1.0
    assert other_here["agreement"] < 0.9


def test_redacted_inputs_are_not_written_and_are_not_replayed(server: ServerProcess) -> None:
    before = _records(server)
    assert _recording(server, "PUT", {"share": 1, "redact": ["x"]}).status_code == 200
    _load(server, 20)
    deadline = time.monotonic() + 20
    while _records(server) < before + 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    _recording(server, "DELETE")
    newest = sorted((server.store / "recordings" / "clf").glob("*.jsonl"))[-1]
    last = json.loads(newest.read_text().splitlines()[-1])
    assert last["inputs"]["x"] == {"datatype": "FP32", "shape": [1, 8], "redacted": True}
    report = _replay(server, 2, "--from", str(newest))
    assert report["skipped_redacted"] >= 20


@pytest.mark.parametrize(
    ("body", "field"),
    [({"share": 2}, "share"), ({"redact": ["nope"]}, "redact"), ({"every": 1}, "every")],
)
def test_a_bad_recording_is_a_400_naming_the_field(
    server: ServerProcess, body: object, field: str
) -> None:
    answer = _recording(server, "PUT", body)
    assert answer.status_code == 400
    assert answer.json()["field"] == field


def test_the_server_replays_recorded_traffic_on_its_own_versions(server: ServerProcess) -> None:
    url = f"{server.management_url}/models/clf/replay"
    report = httpx.post(url, json={"version": 3, "limit": 50}, headers=server.auth, timeout=120)
    assert report.status_code == 200, report.text
    assert report.json()["records"] == 50  # the newest 50 (redacted ones are not replayed)
    assert report.json()["agreement"] < 0.9
    for body, field in (({}, "version"), ({"version": 2, "limit": 0}, "limit")):
        refused = httpx.post(url, json=body, headers=server.auth)
        assert refused.status_code == 400
        assert refused.json()["field"] == field
    assert httpx.post(url, json={"version": 9}, headers=server.auth).status_code == 404
