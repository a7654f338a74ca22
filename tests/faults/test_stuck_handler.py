"""A handler that never returns: its requests get 504 at `request_timeout_s`, its worker
is replaced (a process is killed and restarted; a thread is abandoned to it and new
threads take over), the version goes on serving, and the server still stops cleanly."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.e2e.server import ServerProcess, oip_body
from tests.e2e.test_workers import configure
from tests.helpers import handler_package

STUCK_HANDLER = """
import time
from torchport.runtime import Handler as Base

class Handler(Base):
    # A row holding 13 never finishes, as a handler stuck in a loop would not.
    def preprocess(self, inputs):
        while (inputs["x"] == 13).any():
            time.sleep(0.05)
        return super().preprocess(inputs)
"""

TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def stuck(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("stuck")
    package = handler_package(
        work,
        "stuck",
        STUCK_HANDLER,
        example={"x": np.ones((1, 2), np.float32)},
        runtime={"max_batch_size": 1},
    )
    server = ServerProcess(
        work / "store", [package], TORCHPORT_REQUEST_TIMEOUT_S=str(TIMEOUT_S)
    ).start()
    try:
        yield server
    finally:
        assert server.stop() == 0, server.output()  # abandoned threads do not hold the exit


def infer(server: ServerProcess, value: float) -> httpx.Response:
    x = np.full((1, 2), value, np.float32)
    return httpx.post(f"{server.url}/v2/models/stuck/infer", json=oip_body("x", x), timeout=60)


def assert_times_out_then_serves(server: ServerProcess) -> None:
    started = time.monotonic()
    stuck = infer(server, 13)
    took = time.monotonic() - started
    assert stuck.status_code == 504, stuck.text
    assert "request_timeout_s" in stuck.json()["error"]
    assert TIMEOUT_S <= took < TIMEOUT_S + 15
    deadline = time.monotonic() + 120
    while (ok := infer(server, 1)).status_code != 200:  # a replaced process may be starting
        assert ok.status_code == 503, ok.text
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert ok.json()["outputs"][0]["data"] == [1.0, 1.0]


def test_a_stuck_thread_is_abandoned_and_new_threads_serve(stuck: ServerProcess) -> None:
    for _ in range(3):  # more stuck batches than the version has threads
        assert_times_out_then_serves(stuck)
    assert httpx.get(f"{stuck.url}/v2/health/live").status_code == 200


def test_a_stuck_worker_process_is_killed_and_replaced(stuck: ServerProcess) -> None:
    [pid] = configure(stuck, "stuck", worker_kind="process", workers=1, max_batch_size=1)["pids"]
    assert_times_out_then_serves(stuck)
    shown = httpx.get(f"{stuck.management_url}/models/stuck", headers=stuck.auth).json()
    [new_pid] = shown["versions"][0]["workers"]["pids"]
    assert new_pid != pid
