"""The worker threads a model version's batches run on, and torch's threads per batch.

torch releases the GIL while it computes, so batches of different versions (and the event
loop) run side by side on threads of one process. Each version owns its threads: a slow
model never holds up another's batches.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from torchport.runtime.runner import Runner
from torchport.types import Tensors


@dataclass(frozen=True)
class ThreadBudget:
    """torch intra-op threads for the batches of a runner that runs in this process.

    A batch that runs alone on an idle server gets every core (lowest latency); batches
    that run side by side under load share them, at least `per_batch` each (on CPU, more
    batches in parallel serve more than one batch spread over every core).
    """

    cores: int
    per_batch: int = 1

    def shared(self, workers: int) -> int:
        return max(self.per_batch, self.cores // workers)


@dataclass(frozen=True)
class Ran:
    """A batch's outputs and what it cost: seconds from hand-off to result, and the worker
    thread's CPU and wall time inside the runner (GIL waits included in the wall time)."""

    outputs: Tensors
    seconds: float
    cpu: float
    wall: float


class WorkerPool:
    """Runs `runner`'s batches on `workers` threads of its own."""

    def __init__(self, runner: Runner, workers: int, threads: ThreadBudget | None) -> None:
        self.runner = runner
        self.workers = workers
        self.threads = threads
        """None: torch's thread settings are left as they are (e.g. worker processes)."""
        self._executor: ThreadPoolExecutor | None = None
        self._executor_workers = 0

    def resize(self, workers: int) -> None:
        """Run up to `workers` batches at once from the next batch on."""
        self.workers = workers

    async def run(self, batch: Tensors, *, alone: bool) -> Ran:
        """Run one batch on a worker thread. `alone`: nothing else runs beside it, so it
        may use every core."""
        if self._executor is None or self._executor_workers != self.workers:
            old = self._executor
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="torchport-worker")
            self._executor_workers = self.workers
            if old is not None:
                old.shutdown(wait=False)  # its running batch finishes; no new work goes there
        threads = 0
        if self.threads is not None:
            threads = self.threads.cores if alone else self.threads.shared(self.workers)
        started = time.monotonic()
        outputs, cpu, wall = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._predict, batch, threads
        )
        return Ran(outputs, time.monotonic() - started, cpu, wall)

    def _predict(self, batch: Tensors, threads: int) -> tuple[Tensors, float, float]:
        """On the worker thread: the outputs, and the thread's CPU and wall time on them."""
        # torch's thread count is per calling thread once set here.
        if threads and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        cpu, wall = time.thread_time(), time.monotonic()
        outputs = self.runner.predict(batch)
        return outputs, time.thread_time() - cpu, time.monotonic() - wall

    def close(self) -> None:
        """No new batches; a running one finishes on its thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
