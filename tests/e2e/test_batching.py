"""Batching, back-pressure and deadlines, against the real server."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import numpy as np

from tests.e2e.server import ServerProcess, check_mlp_under_concurrency, oip_body


def test_concurrent_mixed_batch_sizes_equal_the_unbatched_model(
    server: ServerProcess, mlp_package: Path
) -> None:
    check_mlp_under_concurrency(server, mlp_package, seed=7, count=120, max_rows=8, threads=16)


def test_a_full_queue_answers_503_with_retry_after_at_once(server: ServerProcess) -> None:
    # `slow` takes 0.2 s a batch and queues at most 4 requests (its package's runtime).
    x = np.ones((1, 4), np.float32)
    httpx.put(
        f"{server.management_url}/models/slow/versions/1/config",
        json={"max_batch_size": 1},
        headers=server.auth,
    ).raise_for_status()

    def send(_: int) -> tuple[int, float, httpx.Response]:
        started = time.monotonic()
        response = httpx.post(
            f"{server.url}/v2/models/slow/infer", json=oip_body("x", x), timeout=60
        )
        return response.status_code, time.monotonic() - started, response

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, range(12)))
    refused = [(t, r) for status, t, r in results if status == 503]
    served = [r for status, _, r in results if status == 200]
    assert refused, "no request was refused"
    assert len(served) >= 5  # one running and four queued, at least
    assert {status for status, _, _ in results} <= {200, 503}
    for elapsed, response in refused:
        assert response.headers["Retry-After"] == "1"
        assert "queue" in response.json()["error"]
        assert elapsed < 1.0  # refused at once, not after waiting
    httpx.put(
        f"{server.management_url}/models/slow/versions/1/config",
        json={"max_batch_size": 64},
        headers=server.auth,
    ).raise_for_status()


def test_a_request_past_its_deadline_gets_504(server: ServerProcess) -> None:
    x = np.ones((1, 4), np.float32)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(
            httpx.post, f"{server.url}/v2/models/slow/infer", json=oip_body("x", x), timeout=60
        )
        time.sleep(0.05)
        late = httpx.post(
            f"{server.url}/v2/models/slow/infer",
            json=oip_body("x", x),
            headers={"X-Timeout-Ms": "20"},
            timeout=60,
        )
        assert busy.result().status_code == 200
    assert late.status_code == 504
    assert "deadline" in late.json()["error"]
    # The OIP `timeout` parameter (µs), as tritonclient sends it, works the same way.
    body = {**oip_body("x", x), "parameters": {"timeout": 1}}
    assert (
        httpx.post(f"{server.url}/v2/models/slow/infer", json=body, timeout=60).status_code == 504
    )
