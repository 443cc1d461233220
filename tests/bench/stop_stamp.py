"""A sidecar in a managed vLLM's process group, for `bench_swap --gateway`: it writes down
when the group got its stop signal (the gateway's SIGTERM), which no look at the process
table from outside can tell.

    sh -c 'python stop_stamp.py FILE & exec "$0" "$@"' vllm serve ...

Once it catches SIGTERM it appends "<process group> armed" to FILE (the bench waits for that
before a swap); on SIGTERM it appends "<process group> <time.monotonic()>" and exits. Linux has one
CLOCK_MONOTONIC for all processes, so the bench compares the time with its own. Standard
library only: it runs under whatever Python the gateway runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1


def main(path: str) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    # Also told when the vLLM it sits beside exits without a stop, so it never outlives it.
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != os.getpgrp():  # the leader (our parent) is gone already
        return
    # Opened now: after the SIGTERM only a write is left, before the gateway's SIGKILL.
    stamps = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    group = os.getpgrp()
    os.write(stamps, f"{group} armed\n".encode())
    signal.sigwait({signal.SIGTERM})
    os.write(stamps, f"{group} {time.monotonic()!r}\n".encode())


if __name__ == "__main__":
    main(sys.argv[1])
