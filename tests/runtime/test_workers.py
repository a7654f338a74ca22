"""A version's worker pool: its batches run on threads of its own, with torch's intra-op
threads set for each batch (every core alone, a share beside others)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import torch

from torchport.runtime import open_runner
from torchport.runtime.workers import INLINE_AFTER, ThreadBudget, WorkerPool
from torchport.types import Signature, Tensors

SIGNATURE = Signature.model_validate(
    {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "threads", "datatype": "INT64", "shape": [-1]}],
    }
)


class ThreadReporter:
    """A runner that answers, per row, how many torch threads its batch ran with, and
    notes the thread it ran on; `seconds` long a batch."""

    signature = SIGNATURE

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.ran_on: list[int] = []

    def predict(self, batch: Tensors) -> Tensors:
        self.ran_on.append(threading.get_ident())
        time.sleep(self.seconds)
        return {"threads": np.full(len(batch["x"]), torch.get_num_threads(), np.int64)}

    def close(self) -> None:
        pass


X = {"x": np.zeros((3, 1), np.float32)}


def test_a_quick_batch_runs_on_the_versions_threads_with_one_torch_thread() -> None:
    runner = ThreadReporter()
    pool = WorkerPool(runner, 2, ThreadBudget(cores=4, per_batch=1))

    async def main() -> tuple[int, int]:
        alone = await pool.run(X, alone=True)
        shared = await pool.run(X, alone=False)
        return int(alone.outputs["threads"][0]), int(shared.outputs["threads"][0])

    assert asyncio.run(main()) == (1, 1)
    pool.close()


def test_a_slow_batch_alone_gets_every_core_on_the_one_wide_thread() -> None:
    """Batches of every version that use several torch threads share one thread, so the
    process holds one OpenMP team (more, and libgomp stops letting idle threads spin)."""
    first, second = ThreadReporter(0.004), ThreadReporter(0.004)
    pools = [WorkerPool(r, 2, ThreadBudget(cores=4, per_batch=1)) for r in (first, second)]

    async def main() -> list[int]:
        for pool in pools:  # measured slow first (on the version's own threads)
            for _ in range(4):
                await pool.run(X, alone=False)
        counts = []
        for pool in pools:
            counts.append(int((await pool.run(X, alone=True)).outputs["threads"][0]))
            counts.append(int((await pool.run(X, alone=False)).outputs["threads"][0]))
        return counts

    assert asyncio.run(main()) == [4, 2, 4, 2]  # every core alone; 4 cores ÷ 2 workers
    assert first.ran_on[-1] == second.ran_on[-1]  # the one wide thread
    assert first.ran_on[0] != first.ran_on[-1]
    seen: list[int] = []
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert seen == [1]  # a thread started since makes no team of its own
    for pool in pools:
        pool.close()


def test_without_a_budget_torchs_threads_are_left_alone() -> None:
    seen: list[int] = []  # what any new thread gets from torch
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    before = seen[0]
    pool = WorkerPool(ThreadReporter(), 1, None)
    ran = asyncio.run(pool.run({"x": np.zeros((1, 1), np.float32)}, alone=True))
    assert int(ran.outputs["threads"][0]) == before
    assert ran.seconds >= ran.wall >= 0
    pool.close()


def test_a_resized_pool_runs_the_same_model_on_new_threads(mlp_package: Path) -> None:
    runner = open_runner(mlp_package)
    pool = WorkerPool(runner, 1, None)
    x = {"input": np.ones((2, 32), np.float32)}
    want = runner.predict(x)["output"]

    async def main() -> list[np.ndarray]:
        first = await pool.run(x, alone=True)
        pool.resize(3)
        together = await asyncio.gather(*(pool.run(x, alone=False) for _ in range(3)))
        return [first.outputs["output"], *(r.outputs["output"] for r in together)]

    for got in asyncio.run(main()):
        np.testing.assert_array_equal(got, want)
    pool.close()
    runner.close()


def test_a_lone_batch_quicker_than_a_hand_off_runs_on_the_event_loop_once_measured() -> None:
    runner = ThreadReporter()
    pool = WorkerPool(runner, 2, ThreadBudget(cores=4, per_batch=1))

    async def until_inline() -> int:
        """Lone batches run until one runs on the loop (a busy host may pause a thread
        past the quick mark now and then: those batches do not count as quick)."""
        for n in range(1, 2000):
            await pool.run(X, alone=True)
            if runner.ran_on[-1] == threading.get_ident():
                return n
        raise AssertionError("no lone quick batch ran on the event loop")

    async def main() -> None:
        loop_thread = threading.get_ident()
        assert await until_inline() > INLINE_AFTER  # measured on the version's threads first
        ran = await pool.run(X, alone=True)
        assert runner.ran_on[-1] == loop_thread
        assert int(ran.outputs["threads"][0]) == 1
        # Under load batches stay on the threads (the next one gathers while one runs).
        await pool.run(X, alone=False)
        assert runner.ran_on[-1] != loop_thread
        # More rows than any batch measured held: not known to be quick, a thread again.
        await pool.run({"x": np.zeros((40, 1), np.float32)}, alone=True)
        assert runner.ran_on[-1] != loop_thread
        await until_inline()
        # One slow batch (a handler that sometimes waits) sends the next ones to threads.
        runner.seconds = 0.003
        await pool.run(X, alone=True)
        runner.seconds = 0.0
        for _ in range(3):
            await pool.run(X, alone=True)
            assert runner.ran_on[-1] != loop_thread

    asyncio.run(main())
    pool.close()


def test_batches_of_a_runner_in_worker_processes_never_run_on_the_event_loop() -> None:
    runner = ThreadReporter()  # without a thread budget: a runner outside this process
    pool = WorkerPool(runner, 1, None)

    async def main() -> None:
        for _ in range(INLINE_AFTER + 4):
            await pool.run(X, alone=True)
        assert threading.get_ident() not in runner.ran_on

    asyncio.run(main())
    pool.close()
