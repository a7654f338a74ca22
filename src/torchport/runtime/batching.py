"""Dynamic batching: concurrent requests for one model version run as one batch.

`Batcher` wraps a `Runner` (whose `predict` always receives a batch) and knows nothing
else about it; its batches run on a `WorkerPool`, and a `LatencyTarget`, when set, plans
their size. Requests whose inputs agree on every non-batch axis are
packed along axis 0 and run together, and the outputs are split back by row (`Packing`,
which also pads sequences of different lengths). A request waits for
company only under load (a batch running, or the last batch shared): at low load it runs
at once, so batching costs no latency. With several workers each batch takes a fair share
of the load (the most rows the system has held in the last half second or so), so the
workers run batches of similar size side by side; light batches (computing for less than
the wait for company) take all the rows instead.

Back-pressure: at most `max_queue` requests wait; the next one is refused at once with
`Overloaded`. A request whose deadline passes while it waits is dropped with
`DeadlineExceeded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import torch

from torchport.errors import DeadlineExceeded, Overloaded, TorchportError, Unavailable
from torchport.runtime.batch_times import BatchCost
from torchport.runtime.latency_target import LatencyTarget
from torchport.runtime.load import RecentPeak
from torchport.runtime.packing import Key, Packing
from torchport.runtime.runner import Runner
from torchport.runtime.workers import ThreadBudget, WorkerPool
from torchport.tensors import HEAVY_BYTES, weight
from torchport.types import Tensors, batch_size

log = logging.getLogger("torchport.batching")

MEMORY_RECOVERY = 100
"""Batches that fit before a batch cap lowered by an out-of-memory is doubled back."""
LOAD_WINDOW = 0.25
"""Seconds over which the batcher remembers the most rows it has held (the load)."""


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 8
    """Most rows in one batch (a single larger request still runs, alone)."""
    max_batch_delay_ms: float = 2.0
    """Longest a request waits for others to share its batch, under load (with several
    workers and a heavy model: counted from when a worker came free to run it)."""
    max_queue: int = 256
    """Most requests waiting; past it, `Overloaded` at once."""
    workers: int = 1
    """Batches run at the same time (threads; torch releases the GIL)."""
    worker_kind: str = "thread"
    """Where a batch runs: a thread of this process, or a worker process (the runner's)."""
    target_p99_ms: float | None = None
    """A latency target instead of knobs. The batcher measures how long batches of each
    size take and runs the largest (up to `max_batch_size`) that takes at most half the
    target, so a request that waits behind one batch and runs in the next still meets it;
    a request that could not be served within the target, given the work already queued,
    is refused at once (`Overloaded`) rather than queued to miss it. Under load it waits
    for company a tenth of a batch's run time (at most a twentieth of the target)."""


class BatchObserver(Protocol):
    """Told of every batch run and every request's wait (metrics)."""

    def batch(self, rows: int, seconds: float) -> None: ...

    def waited(self, seconds: float) -> None: ...


@dataclass(eq=False)
class _Pending:
    inputs: Tensors
    rows: int
    key: Key
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

    def ran(self, requests: int, rows: int) -> None:
        self.batches += 1
        self.requests += requests
        self.rows += rows
        self.largest_batch = max(self.largest_batch, rows)


class Batcher:
    """Queues requests for `runner` and runs them in batches, `policy.workers` at a time."""

    def __init__(
        self,
        runner: Runner,
        policy: BatchPolicy | None = None,
        threads: ThreadBudget | None = None,
        observer: BatchObserver | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.runner = runner
        self.observer = observer
        self.policy = policy or BatchPolicy()
        self.pool = WorkerPool(runner, self.policy.workers, threads, timeout_s)
        self.target: LatencyTarget | None = None
        """Plans batch sizes when the policy sets `target_p99_ms`."""
        self.stats = BatchStats()
        self._queue: deque[_Pending] = deque()
        self._running = 0
        self._running_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False
        self._under_load = False
        self._load = RecentPeak(LOAD_WINDOW)  # most rows in the system (running + queued) lately
        self._freed = 0.0  # when a worker last came free
        self._cost = BatchCost()  # what recent batches took
        self._packing = Packing(runner.signature)
        self._memory_cap: int | None = None
        """After the device ran out of memory: the most rows a batch takes, halved on each
        failure and doubled back after `MEMORY_RECOVERY` batches that fit."""
        self._fitted = 0
        self.set_policy(self.policy)

    def set_policy(self, policy: BatchPolicy) -> None:
        """Change batching live; the next batch formed follows the new policy."""
        self.policy = policy
        self.pool.resize(policy.workers)
        target, old = policy.target_p99_ms, self.target
        self.target = (
            None
            if target is None
            else LatencyTarget(target, policy.max_batch_size, old.times if old else None)
        )
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def cap(self) -> int:
        """The most rows a batch takes now: the latency target's size, else the policy's;
        lower while the device's memory held less (`_memory_cap`)."""
        cap = self.target.cap if self.target is not None else self.policy.max_batch_size
        return cap if self._memory_cap is None else min(cap, self._memory_cap)

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
        if self.target is not None and self._queue:
            self.target.admit(sum(p.rows for p in self._queue), self.policy.workers)
        loop = asyncio.get_running_loop()
        self._start(loop)
        if (
            not self._queue
            and self._running < self.policy.workers
            and deadline is None
            and not self._under_load
        ):
            # Idle: run at once, skipping the batching loop (no company to wait for).
            return await self._run_alone(inputs)
        pending = _Pending(
            inputs=inputs,
            rows=batch_size(inputs),
            key=self._packing.key(inputs),
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
        self.pool.close()
        self.runner.close()

    async def _run_alone(self, inputs: Tensors) -> Tensors:
        rows = batch_size(inputs)
        self._running += 1
        self._running_rows += rows
        if self.observer is not None:
            self.observer.waited(0.0)
        try:
            outputs = await self._call(inputs, alone=True)
            self.stats.ran(1, rows)
            return outputs
        finally:
            self._free_worker(rows)

    def _free_worker(self, rows: int) -> None:
        """A batch of `rows` is done: its worker is free, and the loop wakes for the queue."""
        self._running -= 1
        self._running_rows -= rows
        self._freed = time.monotonic()
        if self._wakeup is not None and self._queue:
            self._wakeup.set()

    async def _call(self, inputs: Tensors, *, alone: bool) -> Tensors:
        rows = batch_size(inputs)
        try:
            ran = await self.pool.run(inputs, alone=alone)
        except torch.cuda.OutOfMemoryError:
            raise self._out_of_memory(rows) from None
        self._fitted_batch()
        self._cost.observe(ran.seconds, ran.cpu, ran.wall)
        if self.observer is not None:
            self.observer.batch(rows, ran.seconds)
        if self.target is not None:
            # On a GPU, the device's own time on the batch (CUDA events); the end-to-end
            # latencies the target also sees (`served`) correct for the host's share.
            device = ran.device_seconds
            self.target.batch_ran(rows, ran.seconds if device is None else device)
        return ran.outputs

    def _out_of_memory(self, rows: int) -> Unavailable:
        """The device had no memory for a batch of `rows`: that batch answers 503, the cached
        blocks go back to the device, and the next batches take half as many rows."""
        self._memory_cap = max(1, min(rows, self.cap) // 2)
        self._fitted = 0
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("out of device memory on a batch of %d rows: batches now at most %d",
                    rows, self._memory_cap)  # fmt: skip
        return Unavailable(
            f"the device ran out of memory running a batch of {rows} rows; try again "
            f"(batches are now at most {self._memory_cap} rows)"
        )

    def _fitted_batch(self) -> None:
        if self._memory_cap is None:
            return
        self._fitted += 1
        if self._fitted >= MEMORY_RECOVERY:
            self._fitted = 0
            doubled = self._memory_cap * 2
            full = self.target.cap if self.target is not None else self.policy.max_batch_size
            self._memory_cap = None if doubled >= full else doubled

    # -- the batching loop ------------------------------------------------------------

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = loop.create_task(self._loop())

    async def _loop(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        while True:
            rows = self._drop_dead()
            if not self._queue or self._running >= self.policy.workers:
                wakeup.clear()
                await wakeup.wait()
                continue
            first = self._queue[0]
            limit, by_load = self._batch_limit(rows)
            # Wait for company only under load (a request is running, or the last batch was
            # shared): there it pays; at low load it would only add latency.
            delay = self._delay()
            if (
                delay > 0
                and (self._running > 0 or self._under_load)
                and self._compatible_rows(first) < limit
            ):
                # A share of the load counts its wait from when a worker came free: the
                # rows it waits for are those the last batch answered, on their way back.
                since = max(first.arrived, self._freed) if by_load else first.arrived
                wait = since + delay - time.monotonic()
                if wait > 0:
                    wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), wait)
                    continue
            batch = self._take(first, limit)
            # Still under load while requests share batches or wait behind one; a lone
            # request with nothing queued or running means the load has gone.
            self._under_load = len(batch) > 1 or bool(self._queue) or self._running > 0
            self._running += 1
            self._running_rows += sum(p.rows for p in batch)
            asyncio.get_running_loop().create_task(self._run(batch, alone=not self._under_load))

    def _delay(self) -> float:
        """Seconds a request may wait for others to share its batch, under load."""
        if self.target is None:
            return self.policy.max_batch_delay_ms / 1000
        return self.target.delay(self._cost.seconds)

    def _batch_limit(self, rows: int) -> tuple[int, bool]:
        """Rows for the next batch (`rows`: those in the system now), and whether they are a
        share of the recent load: the cap, or with several workers a fair share of the most
        rows the system has held lately (`LOAD_WINDOW`), so that workers run batches of
        similar size side by side instead of one large batch beside a string of small ones.
        The most held lately, not the rows in the system now: a client's next requests are
        out on the wire while the answers to the last batch travel back, and a share of what
        is left would split the load into ever more, smaller batches (each one reads a heavy
        model's weights).

        A light batch (a small model) takes every row in the system all the same (up to the
        cap): it computes for less than a request may wait for company, so a second batch
        beside it gains nothing, while every batch costs the event loop the same hand-offs;
        the rows a running batch holds come back sooner than the wait ends. With a latency
        target, the share is of the rows in the system now (its cap and admission plan batch
        sizes)."""
        workers, cap = self.policy.workers, self.cap
        if workers == 1:
            return cap, False
        if self._light():
            return max(1, min(cap, rows)), False
        if self.target is not None:
            return max(1, min(cap, -(-rows // workers))), False
        return max(1, min(cap, -(-self._load.most // workers))), True

    def _light(self) -> bool:
        """Batches compute for less than a request may wait for company (CPU time of the
        worker thread; a worker process's batch counts by its time alone) and do not wait
        long on anything else (a sleep, I/O, a device): the event loop's share of each
        batch outweighs the model's."""
        if not self.stats.batches or self.target is not None:
            return False  # nothing measured yet, or batch sizes the latency target sets
        delay = self._delay()
        return self._cost.cpu < delay and self._cost.wall < 4 * delay

    def _drop_dead(self) -> int:
        """Drop cancelled and expired requests; the rows left in the system (running and
        queued), noted in the load."""
        now = time.monotonic()
        kept: deque[_Pending] = deque()
        rows = 0
        for p in self._queue:
            if p.cancelled or p.future.done():
                continue
            if p.deadline is not None and p.deadline <= now:
                p.future.set_exception(DeadlineExceeded("the request's deadline passed"))
                continue
            kept.append(p)
            rows += p.rows
        self._queue = kept
        rows += self._running_rows
        self._load.note(rows, now)
        return rows

    def _compatible_rows(self, first: _Pending) -> int:
        return sum(p.rows for p in self._queue if p.key == first.key)

    def _take(self, first: _Pending, limit: int) -> list[_Pending]:
        batch = [first]
        rows = first.rows
        rest: deque[_Pending] = deque()
        self._queue.popleft()
        while self._queue:
            p = self._queue.popleft()
            if p.key == first.key and rows + p.rows <= limit:
                batch.append(p)
                rows += p.rows
            else:
                rest.append(p)
        self._queue = rest
        return batch

    async def _run(self, batch: list[_Pending], *, alone: bool) -> None:
        total = sum(p.rows for p in batch)
        if self.observer is not None:
            now = time.monotonic()
            for p in batch:
                self.observer.waited(now - p.arrived)
        try:
            requests = [p.inputs for p in batch]
            if len(requests) > 1 and sum(map(weight, requests)) >= HEAVY_BYTES:
                # Padding and copying megabytes would stall the loop every port runs on.
                inputs = await asyncio.to_thread(self._packing.pack, requests)
            else:
                inputs = self._packing.pack(requests)
            outputs = await self._call(inputs, alone=alone)
        except BaseException as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        finally:
            # Free the worker and wake the loop before handing out results: the next batch
            # is dispatched first, and runs while this one's responses are written.
            self._free_worker(total)
        self.stats.ran(len(batch), total)
        offset = 0
        done = time.monotonic()
        for p in batch:
            if self.target is not None:
                self.target.served(done - p.arrived)
            if not p.future.done():
                try:
                    p.future.set_result(self._packing.rows(outputs, p.inputs, offset, total))
                except TorchportError as exc:
                    p.future.set_exception(exc)
            offset += p.rows
