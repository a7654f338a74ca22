"""A latency target in place of batching knobs: the batch size that keeps a version's p99
within it, and refusing at once what could not be served in time.

The batcher tells it how long each batch took and how long each request took in all; it
answers with the batch size to run (`cap`), how long a request may wait for company
(`delay`), and refuses a request (`admit`) that would miss the target.
"""

from __future__ import annotations

from torchport.errors import Overloaded
from torchport.runtime.batch_times import BatchTimes

CHECK_EVERY = 64
"""Requests served between two checks of the p99 against the target."""


class LatencyTarget:
    """Plans batch sizes for a p99 of `target_ms`, batches of at most `most` rows.

    It runs the largest batch measured (or, one step past what has been measured, tried)
    to take at most half the target, so a request that waits behind one batch and runs in
    the next still meets it.
    """

    def __init__(self, target_ms: float, most: int, times: BatchTimes | None = None) -> None:
        self.target_ms = target_ms
        self.most = most
        self.times = times or BatchTimes()
        """What batches of each size took (kept when the target or size changes)."""
        self.headroom = 1.0
        """The share of the target the estimates may plan for (less after a miss)."""
        self.cap = most
        """The batch size allowed now."""
        self.shed = 0
        """Requests refused because the target could not be met."""
        self._served: list[float] = []  # latencies (ms) of recent requests
        self.resize()

    def batch_ran(self, rows: int, seconds: float) -> None:
        self.times.observe(rows, seconds)
        self.resize()

    def resize(self) -> None:
        """The cap: the largest batch estimated to run in half the target (with headroom)."""
        budget = self.headroom * self.target_ms / 2000
        self.cap = self.times.largest_within(budget, self.most)

    def served(self, seconds: float) -> None:
        """Correct the estimates with what requests really took: the time measured for
        batches leaves out what the event loop and other work take from the same cores.
        Every `CHECK_EVERY` requests: p99 over the target shrinks the share of it planned
        for by a fifth; p99 well under it gives a twentieth back."""
        self._served.append(seconds * 1000)
        if len(self._served) < CHECK_EVERY:
            return
        p99 = sorted(self._served)[int(len(self._served) * 0.99)]
        self._served.clear()
        if p99 > self.target_ms:
            self.headroom = max(0.2, self.headroom * 0.8)
        elif p99 < 0.8 * self.target_ms:
            self.headroom = min(1.0, self.headroom * 1.05)
        self.resize()

    def admit(self, queued_rows: int, workers: int) -> None:
        """Refuse (`Overloaded`) a request that would wait past the target: the rows queued
        ahead of it and its own, at the measured cost of a row in the largest batch size
        measured within the cap, shared by the workers, plus one batch that may be running."""
        measured = self.times.measured_within(self.cap)
        if measured is None or not queued_rows:
            return
        size, batch = measured
        wait = (queued_rows + 1) * batch / size / workers + batch
        if wait * 1000 > self.headroom * self.target_ms:
            self.shed += 1
            raise Overloaded(
                f"this model version cannot answer within its latency target of "
                f"{self.target_ms:g} ms now ({queued_rows} rows queued, about "
                f"{batch * 1000:.0f} ms a batch); retry later"
            )

    def delay(self, batch_seconds: float) -> float:
        """Seconds a request waits for company under load: a tenth of a batch's run time,
        at most a twentieth of the target."""
        return min(0.1 * batch_seconds, 0.05 * self.target_ms / 1000)
