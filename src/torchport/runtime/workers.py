"""The worker threads a model version's batches run on, and torch's threads per batch.

torch releases the GIL while it computes, so batches of different versions (and the event
loop) run side by side on threads of one process. Each version owns its threads: a slow
model never holds up another's batches.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from torchport.errors import DeadlineExceeded
from torchport.runtime.runner import Runner
from torchport.types import Tensors

log = logging.getLogger("torchport.workers")
T = TypeVar("T")


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


class DaemonThreads(Executor):
    """A fixed pool of daemon threads. (`ThreadPoolExecutor`'s threads are joined when the
    interpreter exits, so one thread stuck in a handler would keep the server from ever
    exiting; these are not.)"""

    def __init__(self, workers: int) -> None:
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._serve, name="torchport-worker", daemon=True)
            for _ in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._work.put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work: each thread ends after what it has (a stuck one never does)."""
        for _ in self._threads:
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            future, work = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except BaseException as exc:
                future.set_exception(exc)


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

    def __init__(
        self,
        runner: Runner,
        workers: int,
        threads: ThreadBudget | None,
        timeout_s: float | None = None,
    ) -> None:
        self.runner = runner
        self.workers = workers
        self.timeout_s = timeout_s
        """A batch still running after this fails with `DeadlineExceeded`, and its thread
        (which Python cannot stop) is left to it while new threads serve the version."""
        self.threads = threads
        """None: torch's thread settings are left as they are (e.g. worker processes)."""
        self._executor: DaemonThreads | None = None
        self._executor_workers = 0

    def resize(self, workers: int) -> None:
        """Run up to `workers` batches at once from the next batch on."""
        self.workers = workers

    async def run(self, batch: Tensors, *, alone: bool) -> Ran:
        """Run one batch on a worker thread. `alone`: nothing else runs beside it, so it
        may use every core."""
        if self._executor is None or self._executor_workers != self.workers:
            old = self._executor
            self._executor = DaemonThreads(self.workers)
            self._executor_workers = self.workers
            if old is not None:
                old.shutdown(wait=False)  # its running batch finishes; no new work goes there
        threads = 0
        if self.threads is not None:
            threads = self.threads.cores if alone else self.threads.shared(self.workers)
        started = time.monotonic()
        running = asyncio.get_running_loop().run_in_executor(
            self._executor, self._predict, batch, threads
        )
        try:
            # asyncio.timeout rather than wait_for: no task of its own per batch.
            async with asyncio.timeout(self.timeout_s):
                outputs, cpu, wall = await running
        except TimeoutError:
            self._abandon()
            raise DeadlineExceeded(
                f"the batch ran past request_timeout_s ({self.timeout_s:g} s); its worker "
                "was replaced"
            ) from None
        return Ran(outputs, time.monotonic() - started, cpu, wall)

    def _abandon(self) -> None:
        """Stop sending batches to the current threads: the next batch gets new ones."""
        if self._executor is not None:
            log.warning(
                "a batch ran past %.0f s: its worker thread is abandoned to it (Python cannot "
                "stop a thread) and new threads take over",
                self.timeout_s or 0,
            )
            self._executor.shutdown(wait=False)
            self._executor = None

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
