"""One supervised OS process: argv list (no shell), its own process group, its own log file.

Stopping signals the whole group (SIGTERM, a grace period, then SIGKILL), because `vllm serve`
spawns EngineCore and worker children that must not outlive it. On Linux the leader also gets
SIGTERM from the kernel if the gateway itself dies without stopping it (kill -9, OOM killer),
and shuts its own children down as on a normal stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# How often a stopped group is looked at until its last member is gone: an on-demand swap
# launches the next model only then (a look reads /proc: about 1 ms for a hundred processes).
_GONE_POLL_S = 0.005


def _terminate_with_parent_hook() -> Callable[[], object] | None:
    """A preexec_fn that asks Linux to SIGTERM the child when its parent dies, or None.

    libc's prctl is looked up here, in the parent: the hook runs between fork and exec and
    must do no more than one plain C call."""
    if os.uname().sysname != "Linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# Written to the log before each launch, so a reader can find where this launch's output starts.
LAUNCH_MARKER = "=== vlm-gateway launching:"


class ManagedProcess:
    def __init__(self, process: asyncio.subprocess.Process, argv: Sequence[str], log_path: Path):
        self._process = process
        self.argv = list(argv)
        self.log_path = log_path
        self.pid = process.pid
        # The exit is awaited in one task, so that any number of watchers can share it.
        self._exited = asyncio.ensure_future(process.wait())

    @classmethod
    async def spawn(
        cls, argv: Sequence[str], env_additions: Mapping[str, str], log_path: Path
    ) -> ManagedProcess:
        """Start `argv` in a new session (its own process group), output appended to log_path."""
        log_file = await asyncio.to_thread(_open_log, log_path, argv)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env_additions},
                start_new_session=True,
                preexec_fn=_terminate_with_parent_hook(),
            )
        finally:
            log_file.close()
        return cls(process, argv, log_path)

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    @property
    def exited(self) -> asyncio.Future[int]:
        """Done (with the exit code) as soon as the leader process exits."""
        return self._exited

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM to the group, up to `grace_s` for the leader to exit, then SIGKILL the group.

        The group is swept with SIGKILL even after a clean exit: children that ignored SIGTERM
        (or were orphaned by a crash of the leader) go too."""
        if not self._exited.done():
            _signal_group(self.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exited), grace_s)
        _signal_group(self.pid, signal.SIGKILL)
        await self.wait()
        await _wait_group_gone(self.pid, grace_s)

    def kill(self) -> None:
        """SIGKILL the whole group now (a wedged server); the exit is seen through `exited`."""
        _signal_group(self.pid, signal.SIGKILL)

    async def log_tail(self, lines: int = 20, max_chars: int = 3000) -> str:
        return await asyncio.to_thread(read_tail, self.log_path, lines, max_chars)


def read_tail(path: Path, lines: int = 20, max_chars: int = 3000) -> str:
    """The last `lines` lines of a log (at most `max_chars`), or '' if there is none."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - 64 * 1024))
            text = file.read().decode(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return tail[-max_chars:]


def _open_log(log_path: Path, argv: Sequence[str]) -> io.BufferedWriter:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Left open on purpose: the caller hands it to the child as stdout, then closes it.
    log_file = open(log_path, "ab")  # noqa: SIM115
    log_file.write(f"\n{LAUNCH_MARKER} {' '.join(argv)}\n".encode())
    log_file.flush()
    return log_file


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def live_group_members(pgid: int) -> list[int]:
    """PIDs in process group `pgid` that still run (zombies waiting to be reaped don't)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


async def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    """Children exit a moment after SIGKILL; wait for that so 'stopped' means gone."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (
        await asyncio.to_thread(live_group_members, pgid)
        and asyncio.get_running_loop().time() < deadline
    ):
        _signal_group(pgid, signal.SIGKILL)
        await asyncio.sleep(_GONE_POLL_S)
