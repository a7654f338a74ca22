"""The load a model version has carried lately: what a heavy batch takes a share of."""

from __future__ import annotations


class RecentPeak:
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
