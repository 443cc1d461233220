"""Giving an unloaded model's memory back: to the device (torch's caching allocators keep freed
blocks for reuse) and to the operating system (glibc keeps freed heap pages in its arenas).

Called once every reference to the model is gone. torch is only looked at when something has
already imported it: this module never imports it."""

from __future__ import annotations

import ctypes
import gc
import sys


def release_memory() -> None:
    """Blocking: collect the model's objects, empty torch's device caches and hand glibc's
    free heap pages back to the OS, so the process's RSS falls back to what it was."""
    gc.collect()
    _empty_device_caches()
    trim_heap()


def _empty_device_caches() -> None:
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.cuda.is_initialized():  # never initialise CUDA just to empty it
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def trim_heap() -> bool:
    """glibc's `malloc_trim(0)`: free pages at the top of the heap and inside every arena go
    back to the OS. Without it, tensors of a few hundred KB (allocated from the heap, not
    mmap'ed) leave RSS high after they are freed. False where there is no glibc (musl, macOS)."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    malloc_trim(0)
    return True
