"""ManagedProcess: own process group, own log, exit seen at once, group stopped entirely."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

from tests.support.polling import until
from tests.support.processes import REPO
from vlm_gateway.launch.process import LAUNCH_MARKER, ManagedProcess, live_group_members, read_tail

# A leader with a child that ignores SIGTERM, like a stubborn engine worker. Neither ends by
# itself within a test; the child says when SIGTERM can no longer stop it.
STUBBORN_FAMILY = (
    "import signal, subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    'signal.signal(signal.SIGTERM, signal.SIG_IGN); print("ignoring", "SIGTERM", flush=True); '
    "time.sleep(3600)'])\n"
    "time.sleep(3600)\n"
)


def test_stop_terminates_the_whole_group_and_kills_what_ignores_sigterm(tmp_path):
    log = tmp_path / "family.log"

    async def scenario():
        process = await ManagedProcess.spawn([sys.executable, "-c", STUBBORN_FAMILY], {}, log)
        try:
            # The log begins with the argv: the words are printed apart so only output matches.
            await until(lambda: "ignoring SIGTERM" in read_tail(log), "the child's handler")
            assert len(live_group_members(process.pid)) == 2
            # Only a SIGKILL ends the child: a stop that waited for it would never return.
            await asyncio.wait_for(process.stop(grace_s=0.5), 60)  # the deadline: a hang guard
            assert live_group_members(process.pid) == []
            assert process.returncode is not None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    asyncio.run(scenario())


def test_exit_is_seen_at_once_and_the_log_keeps_argv_and_output(tmp_path):
    async def scenario():
        argv = [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"]
        process = await ManagedProcess.spawn(argv, {"EXTRA": "1"}, tmp_path / "p.log")
        assert await asyncio.wait_for(process.wait(), 10) == 3
        assert process.exited.result() == 3
        tail = await process.log_tail()
        assert LAUNCH_MARKER in tail and "boom" in tail

    asyncio.run(scenario())


def test_env_additions_reach_the_process(tmp_path):
    async def scenario():
        argv = [sys.executable, "-c", "import os; print('value=' + os.environ['EXTRA'])"]
        process = await ManagedProcess.spawn(argv, {"EXTRA": "42"}, tmp_path / "env.log")
        await process.wait()
        assert "value=42" in await process.log_tail()

    asyncio.run(scenario())


def test_read_tail_limits_lines_and_missing_file_is_empty(tmp_path):
    log = tmp_path / "long.log"
    log.write_text("".join(f"line {n}\n" for n in range(1000)))
    assert read_tail(log, lines=3).splitlines() == ["line 997", "line 998", "line 999"]
    assert read_tail(tmp_path / "absent.log") == ""


# A gateway stand-in: spawns a long sleeper through ManagedProcess, prints its PID, waits.
SUPERVISOR = (
    "import asyncio, sys\n"
    "from pathlib import Path\n"
    "from vlm_gateway.launch.process import ManagedProcess\n"
    "async def main():\n"
    "    child = await ManagedProcess.spawn([sys.executable, '-c', 'import time; time.sleep(60)'],"
    " {}, Path(sys.argv[1]))\n"
    "    print(child.pid, flush=True)\n"
    "    await asyncio.sleep(60)\n"
    "asyncio.run(main())\n"
)


def test_a_supervisor_killed_with_sigkill_leaves_no_child_behind(tmp_path):
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path / "c.log")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        child_pid = int(supervisor.stdout.readline())
        assert live_group_members(child_pid) == [child_pid]
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait(10)
        deadline = time.monotonic() + 5
        while live_group_members(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_group_members(child_pid) == []
    finally:
        supervisor.kill()
        supervisor.wait(10)
