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


def wait_until(
    condition: Callable[[], T],
    what: str = "",
    deadline_s: float = DEADLINE_S,
    interval_s: float = 0.01,
) -> T:
    """Call `condition` until it returns something truthy, and return that."""
    deadline = time.monotonic() + deadline_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {deadline_s} s: {what or condition}")
        time.sleep(interval_s)
    return value


async def until(
    condition: Callable[[], T],
    what: str = "",
    deadline_s: float = DEADLINE_S,
    interval_s: float = 0.01,
) -> T:
    """wait_until for a test running on an event loop: other tasks run while it waits."""
    deadline = time.monotonic() + deadline_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {deadline_s} s: {what or condition}")
        await asyncio.sleep(interval_s)
    return value
