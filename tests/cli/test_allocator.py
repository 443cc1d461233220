"""The serving process keeps its large buffers on glibc's heap (cli/allocator.py): read back
from malloc's own statistics in a fresh child process, so this process's allocator is left
alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vlm_gateway.cli import allocator

# A fresh interpreter allocates a 1 MiB buffer and says how many blocks malloc holds as
# separate mmaps (mallinfo2's hblks) while it lives, with or without the setting first.
_CHILD = """
import ctypes, sys
from vlm_gateway.cli.allocator import keep_large_buffers_on_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
if sys.argv[1] == "set":
    assert keep_large_buffers_on_heap()
before = mallinfo2().hblks
buffer = bytearray(1024 * 1024)
print(mallinfo2().hblks - before)
"""

needs_glibc = pytest.mark.skipif(not allocator.is_glibc(), reason="glibc's malloc only")


def mmapped_blocks_for_a_1mib_buffer(setting: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, setting], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@needs_glibc
def test_a_1mib_buffer_comes_from_the_heap_once_set():
    assert mmapped_blocks_for_a_1mib_buffer("set") == 0


@needs_glibc
def test_without_it_glibc_would_mmap_the_same_buffer():
    """The check above can fail: glibc's default threshold (128 KiB) mmaps this buffer."""
    assert mmapped_blocks_for_a_1mib_buffer("default") == 1


def test_elsewhere_it_does_nothing(monkeypatch):
    monkeypatch.setattr(allocator, "is_glibc", lambda: False)
    monkeypatch.setattr(allocator.ctypes, "CDLL", None)  # would raise if it were reached
    assert allocator.keep_large_buffers_on_heap() is False
