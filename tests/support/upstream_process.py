"""A fake upstream (status_upstream.py's `StatusUpstream`) in a process of its own, so a chaos
test can freeze it (SIGSTOP) and thaw it (SIGCONT) like a real server that hangs. Loopback only.

    with UpstreamProcess() as replica:
        replica.freeze(); ...; replica.thaw()

Run as `python -m tests.support.upstream_process STATUS STALL_S`: prints its base URL on one
line, then serves until killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading

from tests.support.processes import REPO, stop_process_group


class UpstreamProcess:
    def __init__(self, status: int = 200, stall_s: float = 0.0) -> None:
        self._argv = [sys.executable, "-m", "tests.support.upstream_process", str(status)]
        self._argv.append(str(stall_s))
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def start(self) -> UpstreamProcess:
        self.proc = subprocess.Popen(
            self._argv, stdout=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()  # printed once it listens
        if not self.base_url.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"the fake upstream did not start (exit {self.proc.poll()})")
        return self

    def freeze(self) -> None:
        """SIGSTOP: the process stops; the kernel still takes connections into its backlog."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # a frozen process cannot act on TERM
            stop_process_group(self.proc, grace_s=5)

    def __enter__(self) -> UpstreamProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _main(status: int, stall_s: float) -> None:
    from tests.support.status_upstream import StatusUpstream

    with StatusUpstream(status=status, stall_s=stall_s) as upstream:
        print(upstream.base_url, flush=True)
        threading.Event().wait()  # until killed


if __name__ == "__main__":
    _main(int(sys.argv[1]), float(sys.argv[2]))
