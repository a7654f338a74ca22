"""A server in several processes (`--frontends N`): front ends that run the protocols and
hand requests to the engine, a supervisor that restarts whichever dies."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from tests.e2e.server import ServerProcess, oip_body
from torchport.tensors import from_raw, to_raw
from torchport.transports.grpc.convert import pb, stub
from torchport.types import Datatype


def children(pid: int) -> dict[int, str]:
    """The supervisor's children: pid → `engine` or `frontend`."""
    out = {}
    path = Path(f"/proc/{pid}/task/{pid}/children")
    for child in path.read_text().split():
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"torchport.supervisor" in argv:
            out[int(child)] = argv[argv.index(b"torchport.supervisor") + 1].decode()
    return out


def of_kind(pid: int, kind: str) -> list[int]:
    return [child for child, k in children(pid).items() if k == kind]


def wait_for(check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not true within {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mlp_package: Path) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("frontends") / "store"
    proc = ServerProcess(store, [mlp_package], TORCHPORT_FRONTENDS="2").start()
    try:
        yield proc
    finally:
        proc.stop()


def requests_counted(server: ServerProcess, protocol: str) -> float:
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("torchport_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            if f'protocol="{protocol}"' in labels and 'outcome="ok"' in labels:
                total += float(value)
    return total


def test_two_front_ends_serve_rest_and_grpc_from_one_engine(server: ServerProcess) -> None:
    assert sorted(children(server.pid).values()) == ["engine", "frontend", "frontend"]
    x = np.random.default_rng(0).random((3, 32), dtype=np.float32)
    before = requests_counted(server, "oip_rest")
    with httpx.Client() as client:
        answers = [
            client.post(f"{server.url}/v2/models/mlp/infer", json=oip_body("input", x)).json()
            for _ in range(40)
        ]
    first = answers[0]["outputs"][0]
    assert all(a["outputs"][0] == first for a in answers)
    assert first["shape"] == [3, 8]
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=[3, 32])
    request.raw_input_contents.append(to_raw(x))
    with grpc.insecure_channel(server.grpc_address) as channel:
        reply = stub(channel).ModelInfer(request, timeout=30)
    got = from_raw(reply.raw_output_contents[0], Datatype.FP32, [3, 8], name="o")
    assert np.allclose(got, np.array(first["data"], np.float32).reshape(3, 8), atol=1e-6)
    # Each request counted once, by the engine, whichever front end parsed it.
    wait_for(lambda: requests_counted(server, "oip_rest") >= before + 40, 10)
    time.sleep(0.3)
    assert requests_counted(server, "oip_rest") == before + 40


def test_a_bad_request_is_refused_by_the_front_end_naming_the_field(server: ServerProcess) -> None:
    body = oip_body("input", np.zeros((1, 31), np.float32))
    answer = httpx.post(f"{server.url}/v2/models/mlp/infer", json=body)
    assert answer.status_code == 400
    assert answer.json()["field"] == "input"
    assert httpx.post(f"{server.url}/v2/models/nope/infer", json=body).status_code == 404


def test_large_tensors_cross_in_shared_memory_and_leave_none_behind(server: ServerProcess) -> None:
    x = np.random.default_rng(1).random((4096, 32), dtype=np.float32)  # 512 KiB each way
    before = set(os.listdir("/dev/shm"))
    answer = httpx.post(f"{server.url}/v2/models/mlp/infer", json=oip_body("input", x), timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"] == [4096, 8]
    small = httpx.post(f"{server.url}/v2/models/mlp/infer", json=oip_body("input", x[:1]))
    assert np.allclose(answer.json()["outputs"][0]["data"][:8], small.json()["outputs"][0]["data"])
    wait_for(lambda: not (set(os.listdir("/dev/shm")) - before), 5)


def test_a_killed_front_end_fails_only_its_requests_and_is_replaced(server: ServerProcess) -> None:
    x = np.zeros((1, 32), np.float32)
    stop = threading.Event()
    ok, failed = [0], [0]

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post(f"{server.url}/v2/models/mlp/infer", json=oip_body("input", x))
                    assert r.status_code == 200, r.text
                    ok[0] += 1
                except httpx.TransportError:
                    failed[0] += 1  # a connection the killed front end held

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    victim, *_others = of_kind(server.pid, "frontend")
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: len(of_kind(server.pid, "frontend")) == 2 and victim not in children(server.pid)
    )
    served = ok[0]
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert ok[0] > served  # still served after
    assert failed[0] <= len(threads)  # at most the request in flight on each connection
    wait_for(lambda: httpx.get(f"{server.url}/v2/health/ready").status_code == 200)


def test_a_killed_engine_makes_503s_then_comes_back_on_the_same_store(
    server: ServerProcess,
) -> None:
    x = np.zeros((1, 32), np.float32)
    url = f"{server.url}/v2/models/mlp/infer"
    [engine] = of_kind(server.pid, "engine")
    os.kill(engine, signal.SIGKILL)
    seen = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answer = httpx.post(url, json=oip_body("input", x), timeout=30)
        seen.add(answer.status_code)
        if answer.status_code == 200 and 503 in seen:
            break
        assert answer.status_code in (200, 503), answer.text
        if answer.status_code == 503:
            assert answer.json()["code"] == "unavailable"
            ready = httpx.get(f"{server.url}/v2/health/ready")
            assert ready.status_code in (200, 503)
        time.sleep(0.05)
    assert seen == {200, 503}
    assert engine not in of_kind(server.pid, "engine")
    wait_for(lambda: httpx.get(f"{server.url}/v2/health/ready").status_code == 200)
    models = httpx.get(f"{server.management_url}/models", headers=server.auth).json()
    assert [m["name"] for m in models["models"]] == ["mlp"]


def test_sigterm_drains_the_front_ends_then_the_engine(tmp_path: Path, mlp_package: Path) -> None:
    proc = ServerProcess(tmp_path / "store", [mlp_package], TORCHPORT_FRONTENDS="1").start()
    supervisor = proc.pid
    kids = children(supervisor)
    assert sorted(kids.values()) == ["engine", "frontend"]
    assert proc.stop() == 0
    for pid in kids:
        assert not Path(f"/proc/{pid}").exists()
    assert not list(Path(tempfile.gettempdir()).glob(f"torchport-*-{supervisor}.*"))
