"""Wait for a condition by polling it, instead of sleeping for a guessed time.

The deadline only stops a test that would otherwise hang: it is never what a test checks, so
it is generous, and a slow machine makes the test slower, not red.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEADLINE_S = 30.0


class _Deadline:
    def __init__(self, condition: Callable[[], object], what: str, deadline_s: float) -> None:
        self._at = time.monotonic() + deadline_s
        self._message = f"not reached within {deadline_s} s: {what or condition}"

    def check(self) -> None:
        if time.monotonic() > self._at:
            raise AssertionError(self._message)


def wait_until(
    condition: Callable[[], T],
    what: str = "",
    deadline_s: float = DEADLINE_S,
    interval_s: float = 0.01,
) -> T:
    """Call `condition` until it returns something truthy, and return that."""
    deadline = _Deadline(condition, what, deadline_s)
    while not (value := condition()):
        deadline.check()
        time.sleep(interval_s)
    return value


async def until(
    condition: Callable[[], T],
    what: str = "",
    deadline_s: float = DEADLINE_S,
    interval_s: float = 0.01,
) -> T:
    """wait_until for a test running on an event loop: other tasks run while it waits."""
    deadline = _Deadline(condition, what, deadline_s)
    while not (value := condition()):
        deadline.check()
        await asyncio.sleep(interval_s)
    return value
