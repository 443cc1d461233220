"""The backend's own part of one on-demand swap, seen from outside the gateway (for
`bench_swap --gateway`): when the old vLLM's process group is gone, when the new vLLM's
process appears, and when its HTTP server first lists its model, each by polling every 2 ms.

Runs in a thread beside the client's request. Each time is `time.monotonic()`, the clock the
stop stamp (stop_stamp.py) and the client use too. Where a look can only be late, the lateness
counts against the gateway: a spawn seen late shortens the start; the model is taken as served
from the successful connect before the /v1/models that lists it (vLLM 0.32 listens only once
it serves), not from that answer.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

POLL_S = 0.002
DEADLINE_S = 600.0


@dataclass(frozen=True)
class BackendTimes:
    first_exit: float  # the old process group's first member seen gone
    gone: float  # the old process group's last member gone
    spawned: float  # the new vLLM's process seen
    served: float  # the new vLLM's HTTP server serving its model
    port: int  # where the new vLLM listens


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent, process group) of a process, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def _running(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie has given everything back


def _pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def group_members(pgid: int) -> set[int]:
    return {pid for pid in _pids() if (stat := _stat(pid)) and stat[2] == pgid and stat[0] != "Z"}


def vllm_leader(gateway_pid: int, served_name: str) -> int | None:
    """The gateway's child that serves `served_name` (a managed vLLM's group leader)."""
    for pid in _pids():
        stat = _stat(pid)
        if stat and stat[1] == gateway_pid and stat[0] != "Z":
            argv = " ".join(_argv(pid))
            if re.search(rf"--served-model-name {re.escape(served_name)}( |$)", argv):
                return pid
    return None


class SwapWatch:
    """Watches one swap: set up before the request, `run` in a thread while it is sent."""

    def __init__(self, gateway_pid: int, old_group: int, new_name: str) -> None:
        self._gateway_pid = gateway_pid
        self.old_group = old_group
        self._new_name = new_name
        self._old_members = group_members(old_group)
        self._known = _pids()
        self._deadline = time.monotonic() + DEADLINE_S

    def run(self) -> BackendTimes:
        first_exit, gone = self._old_group_gone()
        spawned, pid = self._new_process()
        port = self._port_of(pid)
        return BackendTimes(first_exit, gone, spawned, self._served(pid, port), port)

    def _tick(self, what: str) -> None:
        if time.monotonic() > self._deadline:
            raise TimeoutError(f"swap watch: {what} not seen within {DEADLINE_S:g} s")
        time.sleep(POLL_S)

    def _old_group_gone(self) -> tuple[float, float]:
        """When its first member and its last were seen gone."""
        first_exit = None
        members = len(self._old_members)
        while True:
            self._old_members = {pid for pid in self._old_members if _running(pid)}
            if first_exit is None and len(self._old_members) < members:
                first_exit = time.monotonic()
            if not self._old_members:
                # A member forked meanwhile would have escaped the list: look at them all.
                self._old_members = group_members(self.old_group)
                if not self._old_members:
                    now = time.monotonic()
                    return first_exit or now, now
            self._tick("the old vLLM's exit")

    def _new_process(self) -> tuple[float, int]:
        while True:
            now = time.monotonic()
            for pid in _pids() - self._known:
                stat = _stat(pid)
                if stat and stat[1] == self._gateway_pid:
                    return now, pid
            self._tick("the new vLLM's launch")

    def _port_of(self, pid: int) -> int:
        """The --port in its argv (once the fork has become `vllm serve`)."""
        while True:
            argv = _argv(pid)
            if "--port" in argv[:-1] and f"{self._new_name}" in argv:
                return int(argv[argv.index("--port") + 1])
            self._tick("the new vLLM's argv")

    def _served(self, pid: int, port: int) -> float:
        with httpx.Client(timeout=30) as http:
            while True:
                if not _running(pid):
                    raise RuntimeError(f"the new vLLM (pid {pid}) exited before it served")
                accepted = _accepts(port)
                if accepted is not None and self._lists_model(http, port):
                    return accepted
                self._tick("the new vLLM serving")

    def _lists_model(self, http: httpx.Client, port: int) -> bool:
        try:
            listed = http.get(f"http://127.0.0.1:{port}/v1/models").json()
        except (httpx.HTTPError, ValueError):
            return False
        return any(card.get("id") == self._new_name for card in listed.get("data", []))


def _accepts(port: int) -> float | None:
    """The time a connect to the port succeeded, or None while it refuses."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return time.monotonic()
    except OSError:
        return None


def _stamps(stamps: Path, pgid: int) -> list[str]:
    try:
        lines = stamps.read_text().splitlines()
    except OSError:
        return []
    return [word for group, word in (line.split() for line in lines) if int(group) == pgid]


def wait_armed(stamps: Path, pgid: int) -> None:
    """Until group `pgid`'s stop_stamp.py sidecar is ready to write its SIGTERM down."""
    deadline = time.monotonic() + DEADLINE_S
    while "armed" not in _stamps(stamps, pgid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no stop_stamp.py armed in group {pgid} ({stamps})")
        time.sleep(0.01)


def stop_signal_time(stamps: Path, pgid: int) -> float | None:
    """When group `pgid` got its SIGTERM, as its stop_stamp.py sidecar wrote it."""
    times = [float(word) for word in _stamps(stamps, pgid) if word != "armed"]
    return min(times, default=None)
