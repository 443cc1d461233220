"""What the engine does with an out-of-memory, below the gateway: which errors count, that the
failed batch's memory is unreachable before the device cache is emptied, and how the batch cap
shrinks and grows back (test_operations.py drives the same through a real gateway)."""

from __future__ import annotations

import gc
import weakref

import pytest

from vlm_gateway.backends.inprocess.oom import (
    BatchCap,
    DeviceOutOfMemory,
    free_device_memory,
    is_out_of_memory,
    run_freeing_on_oom,
)

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        torch.cuda.OutOfMemoryError("CUDA out of memory."),
        RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 0)"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"),
    ],
)
def test_the_allocators_errors_count_as_out_of_memory(error):
    assert is_out_of_memory(error)


@pytest.mark.parametrize(
    "error", [RuntimeError("shape mismatch"), ValueError("out of memory"), KeyError("x")]
)
def test_other_errors_do_not(error):
    assert not is_out_of_memory(error)

    def generate() -> None:
        raise error

    with pytest.raises(type(error)):
        run_freeing_on_oom(generate, free=pytest.fail)  # nothing to free: not out of memory


class Activations:
    """Stands for the tensors a batch holds when the allocator gives up."""


def test_the_failed_batchs_memory_is_unreachable_when_the_cache_is_emptied():
    held: list[weakref.ref[Activations]] = []
    alive_when_freed: list[bool] = []

    def generate() -> None:
        activations = Activations()
        held.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def free() -> None:
        alive_when_freed.append(held[0]() is not None)

    with pytest.raises(DeviceOutOfMemory) as caught:
        run_freeing_on_oom(generate, free)
    assert alive_when_freed == [False]  # the traceback's frames were gone before `free`
    assert caught.value.reason.startswith("CUDA out of memory")
    assert caught.value.__context__ is None  # nor does the new error keep them alive


def test_free_device_memory_empties_the_cuda_cache(monkeypatch):
    emptied: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append("cuda"))
    monkeypatch.setattr(gc, "collect", lambda: emptied.append("gc") or 0)
    free_device_memory()
    assert emptied == ["gc", "cuda"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_cap_halves_below_the_failed_batch_and_grows_back_without_another():
    clock = Clock()
    cap = BatchCap(16, recovery_s=60, clock=clock)
    assert cap.shrink(12) == 6  # half the batch that failed, not of the configured 16
    assert cap.shrink(6) == 3
    clock.now += 59
    assert cap.limit == 3
    clock.now += 1
    assert cap.limit == 6
    clock.now += 60 * 5  # long quiet: back to the configured size, no further
    assert cap.limit == 16
    assert cap.describe() == {"batch_cap": 16, "out_of_memory": 2}


def test_the_cap_never_goes_below_one():
    cap = BatchCap(4, clock=Clock())
    assert [cap.shrink(size) for size in (4, 2, 1, 1)] == [2, 1, 1, 1]
