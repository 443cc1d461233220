"""Keep the request path's large buffers on the heap (glibc's malloc only).

An image request moves buffers of about its body's size several times (the body, the data
URL's string, the decoded image, the answer's pieces). glibc serves every block above its mmap
threshold with a fresh mmap and gives it back with munmap, so each one costs page faults as it
is first written; its threshold adapts upwards only as far as the largest block freed so far, and
the heap's top is trimmed back to the system whenever 2x that much is free. At 64 requests in
flight that was 70-90 minor page faults per 450 KB image request (docs/benchmarks.md, "The image
request's copies").

So each serving process sets both once, bounded: blocks under MMAP_THRESHOLD come from the
heap (a whole 8 MiB body, the most a request body is held whole: server/http_protocol.py, is
still mmapped), and up to TRIM_THRESHOLD of free heap at its top is kept for the next requests
rather than returned. Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 8 * 1024 * 1024
TRIM_THRESHOLD = 128 * 1024 * 1024
# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # no such name here: not glibc
        return False


def keep_large_buffers_on_heap() -> bool:
    """Set glibc's mmap and trim thresholds for this process; False where it did nothing."""
    if not is_glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not applied:
        log.warning("mallopt refused the mmap or trim threshold; malloc keeps its defaults")
    return applied
