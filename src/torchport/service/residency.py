"""Which loaded versions stay in memory: a budget of bytes, a policy per model, and the
least recently used version evicted when a load needs room.

`always` models are loaded at start and never evicted; `on_demand` models load on their
first request and are evicted, least recently used first, when another load needs room
within `max_resident_bytes` — never while a request holds them. The registry owns the
versions; this only keeps the accounts and picks, under the registry's lock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

Policy = Literal["always", "on_demand"]
Key = tuple[str, int]


@dataclass
class Resident:
    bytes: int
    policy: Policy
    last_used: float
    """Unix time of the last request that took it (or of its load)."""


class Residency:
    """The memory accounts of the loaded versions (not thread-safe: the registry's lock)."""

    def __init__(self, budget: int | None = None, default: Policy = "always") -> None:
        self.budget = budget
        """Bytes the loaded versions may hold together; None: no limit."""
        self.default: Policy = default
        """The policy of a model whose default version's config does not name one."""
        self._held: OrderedDict[Key, Resident] = OrderedDict()  # least recently used first
        self.sizes: dict[Key, int] = {}
        """The size of every version loaded since start (a reload's estimate)."""

    def admit(self, key: Key, size: int, policy: Policy) -> None:
        self._held[key] = Resident(size, policy, time.time())
        self._held.move_to_end(key)
        self.sizes[key] = size

    def drop(self, key: Key) -> None:
        self._held.pop(key, None)

    def touch(self, key: Key) -> None:
        held = self._held.get(key)
        if held is not None:
            held.last_used = time.time()
            self._held.move_to_end(key)

    def get(self, key: Key) -> Resident | None:
        return self._held.get(key)

    @property
    def used(self) -> int:
        return sum(r.bytes for r in self._held.values())

    def order(self) -> list[Key]:
        """Least recently used first."""
        return list(self._held)

    def victims(self, needed: int, idle: set[Key]) -> list[Key] | None:
        """The on-demand versions to evict, least recently used first, so that `needed`
        more bytes fit the budget: only versions in `idle` (no request holds them). []
        when it fits already; None when evicting every idle on-demand version would not
        make room."""
        if self.budget is None:
            return []
        over = self.used + needed - self.budget
        chosen: list[Key] = []
        for key, held in self._held.items():
            if over <= 0:
                break
            if held.policy == "on_demand" and key in idle:
                chosen.append(key)
                over -= held.bytes
        return chosen if over <= 0 else None
