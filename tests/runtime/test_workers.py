"""A version's worker pool: its batches run on threads of its own, with torch's intra-op
threads set for each batch (every core alone, a share beside others)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import torch

from torchport.runtime import open_runner
from torchport.runtime.workers import ThreadBudget, WorkerPool
from torchport.types import Signature, Tensors

SIGNATURE = Signature.model_validate(
    {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "threads", "datatype": "INT64", "shape": [-1]}],
    }
)


class ThreadReporter:
    """A runner that answers, per row, how many torch threads its batch ran with, and
    notes the thread it ran on."""

    signature = SIGNATURE

    def __init__(self) -> None:
        self.ran_on: set[str] = set()

    def predict(self, batch: Tensors) -> Tensors:
        self.ran_on.add(threading.current_thread().name)
        return {"threads": np.full(len(batch["x"]), torch.get_num_threads(), np.int64)}

    def close(self) -> None:
        pass


def test_a_batch_alone_gets_every_core_and_batches_side_by_side_a_share() -> None:
    runner = ThreadReporter()
    pool = WorkerPool(runner, 2, ThreadBudget(cores=4, per_batch=1))
    x = {"x": np.zeros((3, 1), np.float32)}

    async def main() -> tuple[int, int]:
        alone = await pool.run(x, alone=True)
        shared = await pool.run(x, alone=False)
        return int(alone.outputs["threads"][0]), int(shared.outputs["threads"][0])

    assert asyncio.run(main()) == (4, 2)  # 4 cores ÷ 2 workers
    assert runner.ran_on
    assert all(name.startswith("torchport-worker") for name in runner.ran_on)
    pool.close()


def test_without_a_budget_torchs_threads_are_left_alone() -> None:
    before = torch.get_num_threads()
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
