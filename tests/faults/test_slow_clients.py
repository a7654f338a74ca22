"""Clients that hold on: a body dripped a byte at a time is cut off at `body_timeout_s`
(408, connection closed) while others are served; past `max_inflight` requests a port
answers 503 at once (health probes aside); past `max_grpc_calls` gRPC answers
RESOURCE_EXHAUSTED."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.e2e.server import ServerProcess, oip_body

ROW = oip_body("input", np.zeros((1, 32), np.float32))


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory, mlp_package: Path, slow_package: Path
) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("limits") / "store",
        [mlp_package, slow_package],
        TORCHPORT_BODY_TIMEOUT_S="2",
        TORCHPORT_MAX_INFLIGHT="4",
        TORCHPORT_MAX_GRPC_CALLS="2",
    ).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def unfinished_request(server: ServerProcess, length: int = 1000) -> Iterator[socket.socket]:
    """A connection that has sent a request's headers and none of its body yet."""
    sock = socket.create_connection(("127.0.0.1", server.http_port))
    sock.sendall(
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {length}\r\n\r\n".encode()
    )
    try:
        yield sock
    finally:
        sock.close()


def test_a_dripped_body_is_cut_off_and_others_are_served(limited: ServerProcess) -> None:
    with unfinished_request(limited) as sock:
        sock.settimeout(0.5)
        started = time.monotonic()
        answer = b""
        while time.monotonic() - started < 20:
            # A byte every half second, never the whole body. (It stops just before the
            # timeout: bytes still unread when the server closes would make its close a
            # reset, which can discard the answer before this client reads it.)
            if time.monotonic() - started < 1.8:
                sock.sendall(b" ")
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                assert httpx.post(f"{limited.url}/v2/models/mlp/infer", json=ROW).status_code == 200
                continue
            if not chunk:
                break  # the server closed the connection
            answer += chunk
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"body_timeout_s" in answer
    assert 2 <= took < 10


def test_past_max_inflight_requests_are_refused_at_once_but_health_answers(
    limited: ServerProcess,
) -> None:
    with contextlib.ExitStack() as held:
        for _ in range(4):
            held.enter_context(unfinished_request(limited))
        time.sleep(0.3)  # the four are in the app, reading their bodies
        refused = httpx.post(f"{limited.url}/v2/models/mlp/infer", json=ROW)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert "max_inflight" in refused.json()["error"]
        assert httpx.get(f"{limited.url}/v2/health/live").status_code == 200
        assert httpx.get(f"{limited.url}/v2/health/ready").status_code == 200
        assert httpx.get(f"{limited.url}/metrics").status_code == 200
    deadline = time.monotonic() + 10
    while httpx.post(f"{limited.url}/v2/models/mlp/infer", json=ROW).status_code != 200:
        assert time.monotonic() < deadline, "the slots were not given back"
        time.sleep(0.1)


def test_past_max_grpc_calls_grpc_answers_resource_exhausted(limited: ServerProcess) -> None:
    client = triton_grpc.InferenceServerClient(limited.grpc_address)
    x = triton_grpc.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))

    def call() -> str:
        try:
            client.infer("slow", [x])  # 0.2 s each, one at a time
            return "OK"
        except InferenceServerException as exc:
            return str(exc.status())

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda _: call(), range(6)))
    assert "OK" in outcomes
    assert str(grpc.StatusCode.RESOURCE_EXHAUSTED) in outcomes, outcomes
    assert set(outcomes) <= {"OK", str(grpc.StatusCode.RESOURCE_EXHAUSTED)}, outcomes
