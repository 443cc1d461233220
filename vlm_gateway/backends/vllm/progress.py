"""Progress lines while a managed `vllm serve` starts: a first start can take 15 minutes
(download, weights, torch.compile, CUDA graphs) and vLLM's own output only goes to its log file.

Every `interval` seconds one line says the model, the replica, the time since launch and the
phase read from the log (vlm_gateway/launch/vllm_phase.py). The phase is for people and for
/ready's report; whether the process is ready is still decided by HTTP polling alone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from vlm_gateway.launch.process import read_tail
from vlm_gateway.launch.vllm_phase import PhaseReading, VllmPhase, read_phase

log = logging.getLogger(__name__)

# Enough of the log's end to hold the last recognised line through vLLM's noisier stretches
# (the route list, warnings); read_tail never reads more than its last 64 KiB.
_TAIL_LINES = 400


class StartProgress:
    """The start phase of one replica (`phase`, None before its first launch) and the lines
    that report it."""

    def __init__(self, model: str, replica: int, log_path: Path, interval: float) -> None:
        self.phase: VllmPhase | None = None
        self._label = f"model {model} replica {replica}"
        self._log_path = log_path
        self._interval = interval
        self._last_line = ""

    @contextlib.asynccontextmanager
    async def watching(self, pid: int) -> AsyncIterator[None]:
        """Report while the body waits for process `pid` to be ready. When the body fails, one
        line says how far the start got; the supervisor logs the reason with the log's tail."""
        self.phase, self._last_line = VllmPhase.STARTING, ""
        started = time.monotonic()
        reporter = asyncio.create_task(self._report(pid, started), name=f"progress-{pid}")
        try:
            yield
        except Exception as exc:
            await self._read()
            log.warning(
                "%s: vLLM (pid %d) start ended after %s in phase %s: %s",
                self._label,
                pid,
                _elapsed(started),
                self._phase_text(),
                exc,
            )
            raise
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        self.phase = VllmPhase.READY

    async def _report(self, pid: int, started: float) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._read()
            log.info(
                "%s: vLLM (pid %d) starting for %s; phase: %s",
                self._label,
                pid,
                _elapsed(started),
                self._phase_text(),
            )

    async def _read(self) -> None:
        """Move to the phase the log shows now; a log with no recognised line keeps the last."""
        tail = await asyncio.to_thread(read_tail, self._log_path, _TAIL_LINES, 64_000)
        reading: PhaseReading | None = read_phase(tail)
        if reading is not None:
            self.phase, self._last_line = reading.phase, reading.line

    def _phase_text(self) -> str:
        phase = (self.phase or VllmPhase.STARTING).value
        return f"{phase} ({self._last_line})" if self._last_line else phase


def _elapsed(since: float) -> str:
    seconds = int(time.monotonic() - since)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"
