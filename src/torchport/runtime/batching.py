"""Dynamic batching: concurrent requests for one model version run as one batch.

`BatchingRunner` wraps a `Runner` (whose `predict` always receives a batch) and knows
nothing else about it. Requests whose inputs agree on every non-batch axis are packed
along axis 0, run together, and the outputs are split back by row. A request waits for
company only under load (a batch running, or the last batch shared): at low load it runs
at once, so batching costs no latency. With several workers each batch takes a fair share
of the load (the most rows the system has held in the last half second or so), so the
workers run batches of similar size side by side; light batches (computing for less than
the wait for company) take all the rows instead.

Inputs whose signature declares a `pad_value` may differ in length on their dynamic axes:
they are padded to the longest in the batch, and outputs declared `padded_like` such an
input are cut back to each request's own lengths.

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
from typing import Protocol

import numpy as np
import torch

from torchport.errors import DeadlineExceeded, Overloaded, TorchportError
from torchport.runtime.runner import Runner
from torchport.runtime.service_times import ServiceTimes
from torchport.types import Tensors, batch_size

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


class BatchObserver(Protocol):
    """Told of every batch run and every request's wait (metrics)."""

    def batch(self, rows: int, seconds: float) -> None: ...

    def waited(self, seconds: float) -> None: ...


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
    shed: int = 0
    """Requests refused because the latency target could not be met."""


class BatchingRunner:
    """Queues requests for `runner` and runs them in batches, `policy.workers` at a time."""

    def __init__(
        self,
        runner: Runner,
        policy: BatchPolicy | None = None,
        threads: ThreadBudget | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        self.runner = runner
        self.observer = observer
        self.policy = policy or BatchPolicy()
        self.threads = threads
        """None: torch's thread settings are left as they are (e.g. worker processes)."""
        self.stats = BatchStats()
        self._queue: deque[_Pending] = deque()
        self._running = 0
        self._running_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        self._executor_workers = 0
        self._service = ServiceTimes()
        self._headroom = 1.0  # share of the target the estimates may plan for
        self._served: list[float] = []  # latencies (s) of recent requests, for the headroom
        self._cap = self.policy.max_batch_size
        self.stats.batch_cap = self._cap
        self._under_load = False
        self._load = _Peak(LOAD_WINDOW)  # most rows in the system (running + queued) lately
        self._freed = 0.0  # when a worker last came free
        self._batch_seconds = 0.0  # moving average of a batch's run time
        self._batch_cpu = 0.0  # ... of the CPU time the worker thread spent on it
        self._batch_wall = 0.0  # ... and of its time in the worker (GIL waits included)
        signature = runner.signature
        self._pad = {s.name: s.pad_value for s in signature.inputs if s.pad_value is not None}
        self._trim = {s.name: (s.padded_like, s.shape) for s in signature.outputs if s.padded_like}

    def set_policy(self, policy: BatchPolicy) -> None:
        """Change batching live; the next batch formed follows the new policy."""
        self.policy = policy
        self._cap = policy.max_batch_size
        self.stats.batch_cap = self._cap
        self._headroom, self._served = 1.0, []
        self._resize()
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
        self._admit()
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
            key=self._key(inputs),
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
        rows = batch_size(inputs)
        self._running += 1
        self._running_rows += rows
        if self.observer is not None:
            self.observer.waited(0.0)
        try:
            outputs = await self._call(inputs, alone=True)
            self.stats.batches += 1
            self.stats.requests += 1
            self.stats.rows += rows
            self.stats.largest_batch = max(self.stats.largest_batch, rows)
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
        threads = 0
        if self.threads is not None:
            threads = self.threads.cores if alone else self.threads.shared(self.policy.workers)
        started = time.monotonic()
        outputs, cpu, wall = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._predict, inputs, threads
        )
        seconds = time.monotonic() - started
        rows = batch_size(inputs)
        # Moving averages, from the first batch's own figures (not from zero).
        weight = 0.2 if self.stats.batches else 1.0
        self._batch_seconds += weight * (seconds - self._batch_seconds)
        self._batch_cpu += weight * (cpu - self._batch_cpu)
        self._batch_wall += weight * (wall - self._batch_wall)
        if self.observer is not None:
            self.observer.batch(rows, seconds)
        if self.policy.target_p99_ms is not None:
            self._service.observe(rows, seconds)
            self._resize()
        return outputs

    def _predict(self, inputs: Tensors, threads: int) -> tuple[Tensors, float, float]:
        """On the worker thread: the outputs, and the thread's CPU and wall time on them."""
        # torch's thread count is per calling thread once set here.
        if threads and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        cpu, wall = time.thread_time(), time.monotonic()
        outputs = self.runner.predict(inputs)
        return outputs, time.thread_time() - cpu, time.monotonic() - wall

    def _resize(self) -> None:
        """With a latency target: the largest batch measured (or, one step past what has
        been measured, tried) to run in half the target."""
        target = self.policy.target_p99_ms
        if target is None:
            return
        budget = self._headroom * target / 2000
        cap = self._service.largest_within(budget, self.policy.max_batch_size)
        if cap != self._cap:
            self._cap = cap
            self.stats.batch_cap = cap

    def _served_in(self, seconds: float) -> None:
        """Correct the estimates with what requests really took: the time measured for
        batches leaves out what the event loop and other work take from the same cores.
        Every 64 requests: p99 over the target shrinks the share of it planned for by a
        fifth; p99 well under it gives a twentieth back."""
        target = self.policy.target_p99_ms
        if target is None:
            return
        self._served.append(seconds * 1000)
        if len(self._served) < 64:
            return
        p99 = sorted(self._served)[int(len(self._served) * 0.99)]
        self._served.clear()
        if p99 > target:
            self._headroom = max(0.2, self._headroom * 0.8)
        elif p99 < 0.8 * target:
            self._headroom = min(1.0, self._headroom * 1.05)
        self._resize()

    def _admit(self) -> None:
        """With a latency target, refuse at once a request that would wait past it: the
        rows queued ahead of it and its own, at the measured cost of a row in the largest
        batch size measured within the cap, shared by the workers, plus one batch that
        may be running."""
        target = self.policy.target_p99_ms
        if target is None or not self._queue:
            return
        measured = self._service.measured_within(self._cap)
        if measured is None:
            return
        size, batch = measured
        queued = sum(p.rows for p in self._queue)
        wait = (queued + 1) * batch / size / self.policy.workers + batch
        if wait * 1000 > self._headroom * target:
            self.stats.shed += 1
            raise Overloaded(
                f"this model version cannot answer within its latency target of {target:g} ms "
                f"now ({queued} rows queued, about {batch * 1000:.0f} ms a batch); retry later"
            )

    def _rows(self, outputs: Tensors, request: _Pending, start: int, total: int) -> Tensors:
        """One request's rows of a batch's outputs, padding cut back to its own lengths."""
        out: Tensors = {}
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise TorchportError(
                    f"output '{name}' has no batch axis of {total} rows; it cannot be batched"
                )
            index: list[slice] = [slice(start, start + request.rows)]
            if name in self._trim:
                source, declared = self._trim[name]
                lengths = request.inputs[source].shape
                index += [
                    slice(0, lengths[axis] if declared[axis] == -1 else None)
                    for axis in range(1, min(array.ndim, len(lengths)))
                ]
            out[name] = array[tuple(index)]
        return out

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

    def _key(self, inputs: Tensors) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        """Requests with equal keys can share a batch: equal non-batch shapes, except on
        padded inputs (whose static axes the signature has already checked)."""
        return tuple(
            (n, (-1,) * (a.ndim - 1) if n in self._pad else a.shape[1:], a.dtype.str)
            for n, a in sorted(inputs.items())
        )

    def _delay(self) -> float:
        """Seconds a request may wait for others to share its batch, under load."""
        target = self.policy.target_p99_ms
        if target is None:
            return self.policy.max_batch_delay_ms / 1000
        return min(0.1 * self._batch_seconds, 0.05 * target / 1000)

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
        workers = self.policy.workers
        if workers == 1:
            return self._cap, False
        if self._light():
            return max(1, min(self._cap, rows)), False
        if self.policy.target_p99_ms is not None:
            return max(1, min(self._cap, -(-rows // workers))), False
        return max(1, min(self._cap, -(-self._load.most // workers))), True

    def _light(self) -> bool:
        """Batches compute for less than a request may wait for company (CPU time of the
        worker thread; a worker process's batch counts by its time alone) and do not wait
        long on anything else (a sleep, I/O, a device): the event loop's share of each
        batch outweighs the model's."""
        if not self.stats.batches or self.policy.target_p99_ms is not None:
            return False  # nothing measured yet, or batch sizes the latency target sets
        delay = self._delay()
        return self._batch_cpu < delay and self._batch_wall < 4 * delay

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
            if len(batch) == 1:
                inputs = batch[0].inputs
            else:
                inputs = {
                    n: _stack([p.inputs[n] for p in batch], self._pad.get(n))
                    for n in batch[0].inputs
                }
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
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.rows += total
        self.stats.largest_batch = max(self.stats.largest_batch, total)
        offset = 0
        done = time.monotonic()
        for p in batch:
            self._served_in(done - p.arrived)
            if not p.future.done():
                try:
                    p.future.set_result(self._rows(outputs, p, offset, total))
                except TorchportError as exc:
                    p.future.set_exception(exc)
            offset += p.rows


class _Peak:
    """The most of a quantity noted in the current window of `window` seconds or the one
    before it (so it forgets a burst within one to two windows)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._since = 0.0
        self._now = 0
        self._before = 0

    def note(self, value: int, now: float) -> None:
        elapsed = now - self._since
        if elapsed >= self.window:
            self._before = self._now if elapsed < 2 * self.window else 0
            self._now, self._since = 0, now
        self._now = max(self._now, value)

    @property
    def most(self) -> int:
        return max(self._now, self._before)


def _stack(arrays: list[np.ndarray], pad_value: float | None) -> np.ndarray:
    """Concatenate along axis 0, first padding every other axis to the longest."""
    longest = tuple(max(sizes) for sizes in zip(*(a.shape[1:] for a in arrays), strict=True))
    if pad_value is None or all(a.shape[1:] == longest for a in arrays):
        return np.concatenate(arrays)
    out = np.full((sum(len(a) for a in arrays), *longest), pad_value, dtype=arrays[0].dtype)
    start = 0
    for a in arrays:
        out[(slice(start, start + len(a)), *(slice(0, n) for n in a.shape[1:]))] = a
        start += len(a)
    return out
