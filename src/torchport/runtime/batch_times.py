"""How long a model version's batches take: by batch size (what a latency target plans
with), and lately (what tells a light model from a heavy one)."""

from __future__ import annotations


class BatchTimes:
    """How long batches take, by size (powers of two), as moving averages."""

    def __init__(self) -> None:
        self._by_size: dict[int, float] = {}

    @staticmethod
    def _bucket(rows: int) -> int:
        return 1 << max(0, (rows - 1).bit_length())

    def observe(self, rows: int, seconds: float) -> None:
        bucket = self._bucket(rows)
        known = self._by_size.get(bucket)
        self._by_size[bucket] = seconds if known is None else known + 0.2 * (seconds - known)

    def measured_within(self, rows: int) -> tuple[int, float] | None:
        """The largest measured size up to `rows` and its time (None before any)."""
        sizes = [size for size in self._by_size if size <= rows]
        if not sizes:
            return None
        size = max(sizes)
        return size, self._by_size[size]

    def estimate(self, rows: int) -> float:
        """A size's time: measured, else interpolated between the sizes measured around
        it (linear in rows), else scaled from the largest measured."""
        known = sorted(self._by_size.items())
        below = [(n, s) for n, s in known if n <= rows]
        above = [(n, s) for n, s in known if n >= rows]
        if below and above:
            (n0, s0), (n1, s1) = below[-1], above[0]
            return s0 if n1 == n0 else s0 + (s1 - s0) * (rows - n0) / (n1 - n0)
        if above:
            return above[0][1]
        n0, s0 = below[-1]
        return s0 * rows / n0

    def largest_within(self, budget: float, most: int) -> int:
        """The largest size (a power of two) estimated to run within `budget` seconds; one
        size past the largest measured is tried, so the measurements grow with the load."""
        if not self._by_size:
            return most
        largest = max(self._by_size)
        best, size = 1, 1
        while size <= min(most, 2 * largest):
            if size <= largest and self.estimate(size) > budget:
                break
            if size > largest and self._by_size[largest] > budget:
                break
            best, size = size, size * 2
        return max(1, min(most, best))


class BatchCost:
    """Moving averages of recent batches: seconds from hand-off to result, and the worker
    thread's CPU and wall time in the model (from the first batch's own figures)."""

    WEIGHT = 0.2

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu = 0.0
        self.wall = 0.0
        self._seen = False

    def observe(self, seconds: float, cpu: float, wall: float) -> None:
        weight = self.WEIGHT if self._seen else 1.0
        self._seen = True
        self.seconds += weight * (seconds - self.seconds)
        self.cpu += weight * (cpu - self.cpu)
        self.wall += weight * (wall - self.wall)
