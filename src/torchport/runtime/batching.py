"""Dynamic batching: concurrent requests for one model version run as one batch.

`BatchingRunner` wraps a `Runner` (whose `predict` always receives a batch) and knows
nothing else about it. Requests whose inputs agree on every non-batch axis are packed
along axis 0, run together, and the outputs are split back by row. A request never waits
for company while a worker is idle and nothing else is running: the delay is paid only
when there is load to batch, so batching costs no latency at low load.

Back-pressure: at most `max_queue` requests wait; the next one is refused at once with
`Overloaded`. A request whose deadline passes while it waits is dropped with
`DeadlineExceeded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from torchport.errors import DeadlineExceeded, Overloaded, TorchportError
from torchport.runtime.runner import Runner
from torchport.types import Tensors, batch_size


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 8
    """Most rows in one batch (a single larger request still runs, alone)."""
    max_batch_delay_ms: float = 2.0
    """Longest a request waits for others to share its batch, under load."""
    max_queue: int = 256
    """Most requests waiting; past it, `Overloaded` at once."""
    workers: int = 1
    """Batches run at the same time (threads; torch releases the GIL)."""
    worker_kind: str = "thread"
    """Where a batch runs: a thread of this process, or a worker process (the runner's)."""
    target_p99_ms: float | None = None
    """A latency target instead of knobs: the batcher sizes batches itself to keep the p99
    of request latency under it (up to `max_batch_size`), and never waits for company."""


@dataclass(eq=False)
class _Pending:
    inputs: Tensors
    rows: int
    key: tuple[tuple[str, tuple[int, ...], str], ...]
    arrived: float
    deadline: float | None
    future: asyncio.Future[Tensors]
    cancelled: bool = field(default=False)


@dataclass
class BatchStats:
    """Counters for metrics and tests."""

    batches: int = 0
    requests: int = 0
    rows: int = 0
    refused: int = 0
    expired: int = 0
    largest_batch: int = 0
    batch_cap: int = 0
    """The batch size the latency target allows now (`max_batch_size` without a target)."""


class BatchingRunner:
    """Queues requests for `runner` and runs them in batches, `policy.workers` at a time."""

    def __init__(self, runner: Runner, policy: BatchPolicy | None = None) -> None:
        self.runner = runner
        self.policy = policy or BatchPolicy()
        self.stats = BatchStats()
        self._queue: deque[_Pending] = deque()
        self._running = 0
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        self._executor_workers = 0
        self._latencies: deque[float] = deque(maxlen=_WINDOW)
        self._cap = self.policy.max_batch_size
        self.stats.batch_cap = self._cap

    def set_policy(self, policy: BatchPolicy) -> None:
        """Change batching live; the next batch formed follows the new policy."""
        self.policy = policy
        self._cap = policy.max_batch_size
        self.stats.batch_cap = self._cap
        self._latencies.clear()
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    async def predict(self, inputs: Tensors, *, deadline: float | None = None) -> Tensors:
        """Outputs for `inputs` (a batch of one or more rows), run with other requests'.

        `deadline` is a `time.monotonic()` instant; past it the request is dropped.
        """
        if self._closed:
            raise Overloaded("this model version is shutting down")
        if len(self._queue) >= self.policy.max_queue:
            self.stats.refused += 1
            raise Overloaded(
                f"the queue of this model version is full ({self.policy.max_queue} requests "
                "waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        self._start(loop)
        if not self._queue and self._running < self.policy.workers and deadline is None:
            # Idle: run at once, skipping the batching loop (no company to wait for).
            return await self._run_alone(inputs)
        pending = _Pending(
            inputs=inputs,
            rows=batch_size(inputs),
            key=tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(inputs.items())),
            arrived=time.monotonic(),
            deadline=deadline,
            future=loop.create_future(),
        )
        self._queue.append(pending)
        assert self._wakeup is not None
        self._wakeup.set()
        if deadline is None:
            return await pending.future
        try:
            return await asyncio.wait_for(
                asyncio.shield(pending.future), max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            pending.cancelled = True
            self.stats.expired += 1
            raise DeadlineExceeded("the request's deadline passed before it was served") from None

    def close(self) -> None:
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(Overloaded("this model version was unloaded"))
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self.runner.close()

    async def _run_alone(self, inputs: Tensors) -> Tensors:
        self._running += 1
        arrived = time.monotonic()
        try:
            outputs = await self._call(inputs)
            self._record(time.monotonic() - arrived)
            rows = batch_size(inputs)
            self.stats.batches += 1
            self.stats.requests += 1
            self.stats.rows += rows
            self.stats.largest_batch = max(self.stats.largest_batch, rows)
            return outputs
        finally:
            self._running -= 1
            if self._wakeup is not None and self._queue:
                self._wakeup.set()

    def _call(self, inputs: Tensors) -> asyncio.Future[Tensors]:
        # A thread per worker, owned by this model version: torch releases the GIL, so
        # batches of different versions (and the event loop) run side by side.
        if self._executor is None or self._executor_workers != self.policy.workers:
            old = self._executor
            self._executor = ThreadPoolExecutor(
                self.policy.workers, thread_name_prefix="torchport-worker"
            )
            self._executor_workers = self.policy.workers
            if old is not None:
                old.shutdown(wait=False)  # its running batch finishes; no new work goes there
        return asyncio.get_running_loop().run_in_executor(
            self._executor, self.runner.predict, inputs
        )

    def _record(self, seconds: float) -> None:
        """Feed one request's latency to the latency-target controller.

        Every full window of requests: over the target, halve the batch size; well under
        it while requests queue up, grow it by a quarter (up to `max_batch_size`).
        """
        target = self.policy.target_p99_ms
        if target is None:
            return
        self._latencies.append(seconds * 1000)
        if len(self._latencies) < _WINDOW:
            return
        p99 = _p99(self._latencies)
        cap = self._cap
        if p99 > target:
            cap = max(1, cap // 2)
        elif p99 < 0.6 * target and self._queue:
            cap = min(self.policy.max_batch_size, cap + max(1, cap // 4))
        if cap != self._cap:
            self._cap = cap
            self.stats.batch_cap = cap
            self._latencies.clear()  # measure the new size afresh

    # -- the batching loop ------------------------------------------------------------

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = loop.create_task(self._loop())

    async def _loop(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        while True:
            self._drop_dead()
            if not self._queue or self._running >= self.policy.workers:
                wakeup.clear()
                await wakeup.wait()
                continue
            first = self._queue[0]
            # Wait for company only when there is load (something already running) and no
            # latency target (which gains nothing by waiting).
            if (
                self.policy.target_p99_ms is None
                and self._running > 0
                and self._compatible_rows(first) < self.policy.max_batch_size
            ):
                wait = first.arrived + self.policy.max_batch_delay_ms / 1000 - time.monotonic()
                if wait > 0:
                    wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), wait)
                    continue
            batch = self._take(first)
            self._running += 1
            asyncio.get_running_loop().create_task(self._run(batch))

    def _drop_dead(self) -> None:
        now = time.monotonic()
        kept: deque[_Pending] = deque()
        for p in self._queue:
            if p.cancelled or p.future.done():
                continue
            if p.deadline is not None and p.deadline <= now:
                p.future.set_exception(DeadlineExceeded("the request's deadline passed"))
                continue
            kept.append(p)
        self._queue = kept

    def _compatible_rows(self, first: _Pending) -> int:
        return sum(p.rows for p in self._queue if p.key == first.key)

    def _take(self, first: _Pending) -> list[_Pending]:
        batch = [first]
        rows = first.rows
        rest: deque[_Pending] = deque()
        self._queue.popleft()
        while self._queue:
            p = self._queue.popleft()
            if p.key == first.key and rows + p.rows <= self._cap:
                batch.append(p)
                rows += p.rows
            else:
                rest.append(p)
        self._queue = rest
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        total = sum(p.rows for p in batch)
        try:
            if len(batch) == 1:
                inputs = batch[0].inputs
            else:
                names = list(batch[0].inputs)
                inputs = {n: np.concatenate([p.inputs[n] for p in batch]) for n in names}
            outputs = await self._call(inputs)
        except BaseException as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        finally:
            # Free the worker and wake the loop before handing out results: the next batch
            # is dispatched first, and runs while this one's responses are written.
            self._running -= 1
            if self._wakeup is not None:
                self._wakeup.set()
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.rows += total
        self.stats.largest_batch = max(self.stats.largest_batch, total)
        offset = 0
        done = time.monotonic()
        for p in batch:
            self._record(done - p.arrived)
            if not p.future.done():
                try:
                    p.future.set_result(_rows(outputs, offset, p.rows, total))
                except TorchportError as exc:
                    p.future.set_exception(exc)
            offset += p.rows


_WINDOW = 64


def _p99(values: deque[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _rows(outputs: Tensors, start: int, rows: int, total: int) -> Tensors:
    out: Tensors = {}
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise TorchportError(
                f"output '{name}' has no batch axis of {total} rows; it cannot be batched"
            )
        out[name] = array[start : start + rows]
    return out
