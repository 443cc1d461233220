"""Out of memory while a batch generates: only that batch's requests fail, with a 503 they may
retry; what the batch held goes back to the device; the batch cap halves for a while, so the
model keeps serving smaller batches, and grows back once it has run that long without another.

What counts as out of memory: torch's `OutOfMemoryError` (`torch.cuda.OutOfMemoryError` is the
same class), and the RuntimeErrors other allocators raise ("MPS backend out of memory",
"DefaultCPUAllocator: can't allocate memory"). Nothing here imports torch: it is only asked for
where a kind already loaded it."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from vlm_gateway.backends.inprocess.worker import first_line
from vlm_gateway.core.errors import ServiceUnavailableError

T = TypeVar("T")

# How long a halved cap holds before it doubles again (and again, up to the configured size).
RECOVERY_S = 60.0
# What the 503 tells clients (the openai SDKs honour it): by then the smaller cap is in force.
RETRY_AFTER_S = 1
_ALLOCATOR_MESSAGES = ("out of memory", "can't allocate memory")


class DeviceOutOfMemory(Exception):  # noqa: N818 - not an error of ours: the device's state
    """A batch ran out of device memory; raised once what it held was freed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_out_of_memory(exc: BaseException) -> bool:
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(m in text for m in _ALLOCATOR_MESSAGES)


def run_freeing_on_oom(work: Callable[[], T], free: Callable[[], None] | None = None) -> T:
    """`work()`; when it runs out of memory, `free` (by default: the device's cache emptied)
    runs after the error's traceback, whose frames hold the batch's tensors, is gone, then
    `DeviceOutOfMemory` is raised in its place."""
    try:
        return work()
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        reason = first_line(exc)
    (free or free_device_memory)()
    raise DeviceOutOfMemory(reason)


def free_device_memory() -> None:
    """Collect what the failed batch left in reference cycles, then hand the allocator's cached
    blocks back to the device (CUDA, MPS), so the next batch starts from what the model needs."""
    gc.collect()
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


class BatchCap:
    """How many rows a batch may take now: the configured maximum, halved (floor 1, below the
    size of the batch that failed) after each out-of-memory, doubled back once per `recovery_s`
    without one."""

    def __init__(
        self,
        maximum: int,
        recovery_s: float = RECOVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maximum = maximum
        self.out_of_memory = 0  # batches that ran out of memory since start
        self._limit = maximum
        self.recovery_s = recovery_s
        self._clock = clock
        self._changed_at = 0.0

    @property
    def limit(self) -> int:
        self._grow_back()
        return self._limit

    def shrink(self, batch_size: int) -> int:
        """A batch of `batch_size` rows ran out of memory: the new, smaller cap."""
        self.out_of_memory += 1
        self._limit = max(1, min(self.limit, batch_size) // 2)
        self._changed_at = self._clock()
        return self._limit

    def _grow_back(self) -> None:
        while self._limit < self.maximum and self._clock() - self._changed_at >= self.recovery_s:
            self._limit = min(self.maximum, self._limit * 2)
            self._changed_at += self.recovery_s

    def describe(self) -> dict[str, int]:
        return {"batch_cap": self.limit, "out_of_memory": self.out_of_memory}


def out_of_memory_error(model: str, batch_size: int, cap: int) -> ServiceUnavailableError:
    """What each request of a batch that ran out of memory gets: a 503 to retry."""
    rows = "row" if batch_size == 1 else "rows"
    return ServiceUnavailableError(
        f"The model '{model}' ran out of device memory generating a batch of {batch_size} "
        f"{rows} with this request; the gateway freed that memory and now batches at most "
        f"{cap} for a while. Retry the request.",
        code="out_of_memory",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
