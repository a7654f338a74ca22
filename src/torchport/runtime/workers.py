"""The worker threads a model version's batches run on, and torch's threads per batch.

torch releases the GIL while it computes, so batches of different versions (and the event
loop) run side by side on threads of one process. Each version owns its threads: a slow
model never holds up another's batches.

A batch that uses more than one torch thread runs on the process's one *wide* thread
instead. Each thread that starts OpenMP work with several threads gets a team of its
own, and once a process holds more OpenMP threads than cores, libgomp stops letting idle
ones spin (it caps the spin at 100): every parallel region then wakes sleeping threads,
which made `minilm` take 11 ms a request on a worker thread against 4.6 ms with a
single team (benchmarks/README.md). One wide thread keeps one team.

A batch that computes for less than a hand-off between threads costs (`INLINE_UNDER_S`,
as measured on this version's recent batches) runs on the event loop itself: the two
thread wake-ups around it took longer than the model (`mlp`: 30 µs of model against
~100 µs of hand-offs), and the loop waited for them all the same.
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
from torchport.runtime.transfer import take_device_seconds
from torchport.types import Tensors, batch_size

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
    device_seconds: float | None = None
    """The batch's time on its GPU (CUDA events, `runtime/transfer.py`); None on the CPU."""


WIDE_AFTER_S = 0.001
"""Batches that take at least this long (on average) use the wide thread."""
INLINE_UNDER_S = 0.0002
"""Batches expected to take less than this, run by the version's runner in this process,
run on the event loop (see above)."""
INLINE_AFTER = 64
"""Quick batches in a row, measured, before any runs on the loop."""


class _Wide:
    """The process's one thread for batches with several torch threads (see above)."""

    executor: DaemonThreads | None = None
    lock = threading.Lock()

    @classmethod
    def get(cls) -> DaemonThreads:
        with cls.lock:
            if cls.executor is None:
                cls.executor = DaemonThreads(1)
            return cls.executor

    @classmethod
    def abandon(cls, executor: DaemonThreads) -> None:
        """A batch is stuck on `executor`: the next wide batch gets a new thread."""
        with cls.lock:
            if cls.executor is executor:
                cls.executor.shutdown(wait=False)
                cls.executor = None


class _Cost:
    """A version's recent batches: how long one takes inside the runner, for its rows."""

    def __init__(self) -> None:
        self.quick = 0
        """Quick batches (under `INLINE_UNDER_S`) since the last slow one (`WIDE_AFTER_S`
        or more): a handler that sometimes waits on something goes back to threads."""
        self.per_row = 0.0
        self.usual = 0.0
        self.most_rows = 0

    def note(self, batch: Tensors, wall: float) -> None:
        rows = batch_size(batch)
        if wall < INLINE_UNDER_S:
            self.quick += 1
        elif wall >= WIDE_AFTER_S:  # a real wait, not the host pausing the thread a moment
            self.quick = 0
        self.most_rows = max(self.most_rows, rows)
        # Moving averages of a batch's time and of its time per row: the first is what a
        # batch of the usual size takes, the second scales it to larger ones.
        self.usual += (wall - self.usual) * 0.2
        self.per_row += (wall / max(1, rows) - self.per_row) * 0.2

    def expect(self, batch: Tensors) -> float:
        """Seconds `batch` should take; unknown (infinite) until `INLINE_AFTER` quick
        batches in a row, or for more rows than any batch measured held."""
        rows = batch_size(batch)
        if self.quick < INLINE_AFTER or rows > self.most_rows:
            return float("inf")
        return max(self.usual, self.per_row * rows)


class WorkerPool:
    """Runs `runner`'s batches on `workers` threads of its own (and, with several torch
    threads, on the process's wide thread)."""

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
        self._seconds = 0.0
        """A moving average of a batch's seconds: what decides the wide thread."""
        self._inside = _Cost()
        """What batches took inside the runner, per row: what decides running inline."""

    def resize(self, workers: int) -> None:
        """Run up to `workers` batches at once from the next batch on."""
        self.workers = workers

    def inline(self, batch: Tensors) -> bool:
        """Whether `batch`, run alone, runs on the event loop: a runner in this process
        whose batches take less than a hand-off to a thread costs."""
        return self.threads is not None and self._inside.expect(batch) < INLINE_UNDER_S

    async def run(self, batch: Tensors, *, alone: bool) -> Ran:
        """Run one batch on a worker thread, or, `alone` (nothing else runs beside it, so
        it may use every core), on the event loop when `inline` says so. Under load
        batches keep to the threads: while one runs there the next gathers its rows."""
        if alone and self.inline(batch):
            # It will hold the loop while it runs: first let the tasks already ready run
            # (requests already read reach their batcher and, under load, queue for a
            # batch on the threads instead of each running alone in turn).
            await asyncio.sleep(0)
            started = time.monotonic()
            outputs, cpu, wall, device = self._predict(batch, 1)
            self._inside.note(batch, wall)
            return Ran(outputs, time.monotonic() - started, cpu, wall, device)
        if self._executor is None or self._executor_workers != self.workers:
            old = self._executor
            self._executor = DaemonThreads(self.workers)
            self._executor_workers = self.workers
            if old is not None:
                old.shutdown(wait=False)  # its running batch finishes; no new work goes there
        threads = 0
        if self.threads is not None:
            threads = self.threads.cores if alone else self.threads.shared(self.workers)
        # Tiny batches gain nothing from more threads, and lose to the wide thread's queue
        # (mlp at c=1: 0.7 against 1.0 ms): they stay on the pool's threads — with one
        # torch thread, as every batch there, so no other thread ever makes a team.
        wide = threads > 1 and self._seconds >= WIDE_AFTER_S
        if not wide:
            threads = min(threads, 1)
        executor = _Wide.get() if wide else self._executor
        started = time.monotonic()
        running = asyncio.get_running_loop().run_in_executor(
            executor, self._predict, batch, threads
        )
        try:
            # asyncio.timeout rather than wait_for: no task of its own per batch.
            async with asyncio.timeout(self.timeout_s):
                outputs, cpu, wall, device = await running
        except TimeoutError:
            if executor is self._executor:
                self._abandon()
            else:
                log.warning(
                    "a batch ran past %.0f s: the wide thread is abandoned to it (Python "
                    "cannot stop a thread) and a new one takes over",
                    self.timeout_s or 0,
                )
                _Wide.abandon(executor)
            raise DeadlineExceeded(
                f"the batch ran past request_timeout_s ({self.timeout_s:g} s); its worker "
                "was replaced"
            ) from None
        seconds = time.monotonic() - started
        self._seconds += (seconds - self._seconds) * 0.2
        self._inside.note(batch, wall)
        return Ran(outputs, seconds, cpu, wall, device)

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

    def _predict(self, batch: Tensors, threads: int) -> tuple[Tensors, float, float, float | None]:
        """On the worker thread: the outputs, the thread's CPU and wall time on them, and
        their time on a GPU (None on the CPU)."""
        # torch's thread count is per calling thread once set here.
        if threads and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        take_device_seconds()  # nothing left from a batch that failed
        cpu, wall = time.thread_time(), time.monotonic()
        try:
            outputs = self.runner.predict(batch)
        finally:
            if threads > 1 and self.threads is not None:
                # torch also keeps the last count for threads that have not run yet: a
                # new thread (a load, an upload's check) must not make a team of its own.
                torch.set_num_threads(self.threads.per_batch)
        return outputs, time.thread_time() - cpu, time.monotonic() - wall, take_device_seconds()

    def close(self) -> None:
        """No new batches; a running one finishes on its thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
