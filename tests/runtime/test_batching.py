"""Dynamic batching: packed and split exactly, bounded queues, deadlines."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from torchport.errors import DeadlineExceeded, Overloaded
from torchport.runtime import BatchingRunner, BatchPolicy, open_runner


def test_concurrent_requests_of_mixed_sizes_get_exactly_their_own_rows(mlp_package: Path) -> None:
    runner = open_runner(mlp_package)
    rng = np.random.default_rng(0)
    requests = [
        rng.standard_normal((int(rng.integers(1, 6)), 32)).astype(np.float32) for _ in range(60)
    ]
    want = [runner.predict({"input": x})["output"] for x in requests]
    batcher = BatchingRunner(runner, BatchPolicy(max_batch_size=16, max_batch_delay_ms=5))

    async def main() -> list[np.ndarray]:
        results = await asyncio.gather(*(batcher.predict({"input": x}) for x in requests))
        return [r["output"] for r in results]

    got = asyncio.run(main())
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert batcher.stats.requests == 60
    assert batcher.stats.batches < 60, "concurrent requests were not batched"
    assert batcher.stats.largest_batch <= 16
    batcher.close()


def test_requests_whose_shapes_differ_are_not_packed_together(slow_package: Path) -> None:
    batcher = BatchingRunner(
        open_runner(slow_package), BatchPolicy(max_batch_size=64, max_batch_delay_ms=50)
    )

    async def main() -> list[np.ndarray]:
        shapes = [(1, 4), (2, 3), (1, 4), (3, 3)]
        results = await asyncio.gather(
            *(batcher.predict({"x": np.full(s, i, np.float32)}) for i, s in enumerate(shapes))
        )
        return [r["output"] for r in results]

    for i, out in enumerate(asyncio.run(main())):
        assert np.all(out == 2 * i)
    batcher.close()


def test_a_full_queue_refuses_at_once(slow_package: Path) -> None:
    batcher = BatchingRunner(open_runner(slow_package), BatchPolicy(max_batch_size=1, max_queue=2))
    x = {"x": np.ones((1, 4), np.float32)}

    async def main() -> list[object]:
        running = asyncio.ensure_future(batcher.predict(x))
        await asyncio.sleep(0.02)  # it runs; the next two wait; the one after is refused
        waiting = [asyncio.ensure_future(batcher.predict(x)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert batcher.queued == 2
        started = time.monotonic()
        with pytest.raises(Overloaded, match="queue .* is full"):
            await batcher.predict(x)
        assert time.monotonic() - started < 0.05
        return await asyncio.gather(running, *waiting)

    results = asyncio.run(main())
    assert all(np.all(r["output"] == 2) for r in results)
    assert batcher.stats.refused == 1
    batcher.close()


def test_a_request_past_its_deadline_is_dropped(slow_package: Path) -> None:
    batcher = BatchingRunner(open_runner(slow_package), BatchPolicy(max_batch_size=1))
    x = {"x": np.ones((1, 4), np.float32)}

    async def main() -> None:
        busy = asyncio.ensure_future(batcher.predict(x))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await batcher.predict(x, deadline=time.monotonic() + 0.05)
        assert time.monotonic() - started < 0.15  # dropped at its deadline, not after the wait
        await busy

    asyncio.run(main())
    assert batcher.stats.expired == 1
    batcher.close()


def test_a_lone_request_does_not_wait_for_company(mlp_package: Path) -> None:
    batcher = BatchingRunner(open_runner(mlp_package), BatchPolicy(max_batch_delay_ms=500))
    x = {"input": np.ones((1, 32), np.float32)}

    async def main() -> float:
        started = time.monotonic()
        await batcher.predict(x)
        return time.monotonic() - started

    assert asyncio.run(main()) < 0.4
    batcher.close()


def test_a_latency_target_shrinks_batches_that_are_too_slow(mlp_package: Path) -> None:
    policy = BatchPolicy(max_batch_size=32, target_p99_ms=10)
    batcher = BatchingRunner(open_runner(mlp_package), policy)
    assert batcher.stats.batch_cap == 32
    for _ in range(64):
        batcher._record(0.050)  # 50 ms: over the target
    assert batcher.stats.batch_cap == 16
    for _ in range(64):
        batcher._record(0.050)
    assert batcher.stats.batch_cap == 8
    for _ in range(64):
        batcher._record(0.001)  # well under it, but nothing waits: no reason to grow
    assert batcher.stats.batch_cap == 8
    batcher.set_policy(BatchPolicy(max_batch_size=4, target_p99_ms=10))
    assert batcher.stats.batch_cap == 4
    batcher.close()


def test_with_a_latency_target_results_stay_exact(mlp_package: Path) -> None:
    runner = open_runner(mlp_package)
    rng = np.random.default_rng(1)
    requests = [
        rng.standard_normal((int(rng.integers(1, 4)), 32)).astype(np.float32) for _ in range(200)
    ]
    want = [runner.predict({"input": x})["output"] for x in requests]
    batcher = BatchingRunner(runner, BatchPolicy(max_batch_size=16, target_p99_ms=0.001))

    async def main() -> list[np.ndarray]:
        results = await asyncio.gather(*(batcher.predict({"input": x}) for x in requests))
        return [r["output"] for r in results]

    for g, w in zip(asyncio.run(main()), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    # An unreachable target drives batches down to single requests.
    assert batcher.stats.batch_cap < 16
    batcher.close()
