"""Retry budgets: how many failovers a model may spend, so a sick fleet is not hit twice as
hard by its own retries (the budget rule of Linkerd and Envoy).

Per model, over a sliding window of `WINDOW_S` seconds: retries may be up to `retry_budget`
(a fraction, default 0.2) of the requests, and never fewer than `MIN_RETRIES_PER_WINDOW`, so a
quiet model still gets its few failovers. `retry_budget: 0` turns failover off.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 10.0
MIN_RETRIES_PER_WINDOW = 10
_SLOT_S = 1.0  # the window is counted in one-second slots: memory stays small at any rate


class _Window:
    def __init__(self) -> None:
        self.slots: deque[list[int]] = deque()  # [slot number, requests, retries]

    def _current(self, now: float) -> list[int]:
        slot = math.floor(now / _SLOT_S)
        oldest_kept = slot - math.ceil(WINDOW_S / _SLOT_S) + 1
        while self.slots and self.slots[0][0] < oldest_kept:
            self.slots.popleft()
        if not self.slots or self.slots[-1][0] != slot:
            self.slots.append([slot, 0, 0])
        return self.slots[-1]

    def add(self, now: float, requests: int = 0, retries: int = 0) -> None:
        current = self._current(now)
        current[1] += requests
        current[2] += retries

    def totals(self, now: float) -> tuple[int, int]:
        self._current(now)
        return sum(s[1] for s in self.slots), sum(s[2] for s in self.slots)


class RetryBudgets:
    """One window per model; `ratio(model)` is the model's `retry_budget` setting."""

    def __init__(
        self, ratio: Callable[[str], float], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ratio = ratio
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def _window(self, model: str) -> _Window:
        return self._windows.setdefault(model, _Window())

    def requested(self, model: str) -> None:
        """Count one request (its first attempt)."""
        self._window(model).add(self._clock(), requests=1)

    def try_spend(self, model: str) -> bool:
        """Take one retry from the model's budget; False when it is spent."""
        ratio = self._ratio(model)
        if ratio <= 0:
            return False
        window = self._window(model)
        now = self._clock()
        requests, retries = window.totals(now)
        if retries >= max(MIN_RETRIES_PER_WINDOW, ratio * requests):
            return False
        window.add(now, retries=1)
        return True
