"""Backend `vllm`: `vllm serve` launched, supervised and restarted by the gateway.

Requests go through `OpenAIUpstreamBackend` unchanged; this class adds the process around it:
start (one at a time per GPU), readiness by HTTP, liveness (PID watch and a real 1-token chat),
restart with capped exponential backoff, `max_model_len: auto`, and a clean group shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from vlm_gateway.backends.base import State
from vlm_gateway.backends.openai_upstream.backend import OpenAIUpstreamBackend
from vlm_gateway.backends.vllm.probe import probe_body
from vlm_gateway.backends.vllm.progress import StartProgress
from vlm_gateway.core.errors import UpstreamError
from vlm_gateway.launch.gpu_sharing import StartSequencer
from vlm_gateway.launch.process import LAUNCH_MARKER, ManagedProcess, read_tail
from vlm_gateway.launch.readiness import ProcessExited, StartTimeout, wait_until_serving
from vlm_gateway.launch.vllm_command import VllmCommand, estimated_max_model_len

log = logging.getLogger(__name__)

# A process that served this long before dying starts its backoff over.
_STABLE_UPTIME_S = 60.0
# The gateway's scrape waits for every vLLM's /metrics: a stuck one must not stall it.
_METRICS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Supervision:
    startup_timeout: float = 900.0
    liveness_interval: float = 10.0
    liveness_timeout: float = 30.0
    liveness_failures: int = 3
    probe_image: bool = True
    restart_backoff: float = 1.0
    restart_backoff_max: float = 60.0
    max_restarts: int = 10
    stop_grace: float = 10.0
    progress_interval: float = 5.0  # seconds between progress lines while it starts

    def backoff(self, failures_in_a_row: int) -> float:
        return min(
            self.restart_backoff_max, self.restart_backoff * 2.0 ** max(0, failures_in_a_row)
        )


class StartFailed(Exception):
    pass


class ManagedVllmBackend(OpenAIUpstreamBackend):
    kind = "vllm"

    def __init__(
        self,
        name: str,
        command: VllmCommand,
        client: aiohttp.ClientSession,
        *,
        sequencer: StartSequencer,
        log_path: Path,
        max_model_len: int | str | None = None,
        supervision: Supervision = Supervision(),
        timeout: float = 600.0,
        replica: int = 0,
        max_connections: int = 1000,
    ) -> None:
        super().__init__(
            name,
            "http://127.0.0.1:0/v1",
            client,
            upstream_model=name,
            timeout=timeout,
            max_connections=max_connections,
            health_interval=supervision.liveness_interval,
            image_uuids=True,  # vLLM takes them (openai_upstream/image_ids.py)
        )
        self.command = command
        self.log_path = log_path
        self._sequencer = sequencer
        self._max_model_len_setting = max_model_len
        self._policy = supervision
        self._process: ManagedProcess | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0
        self.served_max_model_len: int | None = None
        self.replica = replica
        self.progress = StartProgress(name, replica, log_path, supervision.progress_interval)
        self.set_status(State.STARTING, "waiting for its turn to start")

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._supervisor = asyncio.create_task(
            self._guarded_supervise(), name=f"supervise-{self.name}"
        )

    async def _guarded_supervise(self) -> None:
        try:
            await self._supervise()
        except Exception as exc:  # a bug here must show as `failed`, not a silent `starting`
            log.exception("model %s: supervision failed", self.name)
            await self._stop_process()
            self._fail(f"supervision failed: {exc!r}")

    async def stop(self) -> None:
        await self._halt()
        self.set_status(State.STOPPED)

    async def _halt(self) -> None:
        """Supervision and the process group stopped; nothing of ours is left running."""
        self._stopping = True
        if self._supervisor:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._stop_process()

    async def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await process.stop(self._policy.stop_grace)

    async def _supervise(self) -> None:
        failures_in_a_row = 0
        ever_ready = False
        while True:
            try:
                await self._start_until_ready()
            except StartFailed as exc:
                await self._stop_process()
                failures_in_a_row += 1
                if not ever_ready or failures_in_a_row > self._policy.max_restarts:
                    self._fail(str(exc))
                    return
                log.error("model %s: restart failed: %s", self.name, exc)  # with the log tail
                await self._back_off(failures_in_a_row, str(exc))
                continue
            ever_ready = True
            ready_at = time.monotonic()
            why = await self._watch_until_dead()
            await self._stop_process()
            if time.monotonic() - ready_at > _STABLE_UPTIME_S:
                failures_in_a_row = 0
            self.restarts += 1
            log.error("model %s: %s; restart #%d", self.name, why, self.restarts)
            await self._back_off(failures_in_a_row, why)
            failures_in_a_row += 1

    async def _back_off(self, failures_in_a_row: int, why: str) -> None:
        delay = self._policy.backoff(failures_in_a_row)
        self.set_status(
            State.UNAVAILABLE,
            f"{why}; restarting in {delay:g} s (restarts so far: {self.restarts})",
        )
        await asyncio.sleep(delay)

    def _fail(self, reason: str) -> None:
        log.error("model %s failed: %s", self.name, reason)
        self.set_status(State.FAILED, reason)

    # -- start and readiness ----------------------------------------------------------------

    async def _start_until_ready(self) -> None:
        """Launch and wait for readiness; `auto` relaunches with vLLM's estimate. Raises
        StartFailed with the log tail when the process exits or misses its deadline."""
        command = self.command
        async with self._sequencer.turn(command.gpus):
            while True:
                port = command.port
                if not port:  # None: a free port for each launch
                    port = await asyncio.to_thread(_free_port)
                process = await self._launch(command, port)
                try:
                    async with self.progress.watching(process.pid):
                        card = await wait_until_serving(
                            self._client,
                            self._root_url(port),
                            command.served_name,
                            process,
                            self._policy.startup_timeout,
                        )
                except ProcessExited as exc:
                    command = await self._retry_command(command, exc)
                    await self._stop_process()
                    continue
                except StartTimeout as exc:
                    tail = await process.log_tail()
                    raise StartFailed(f"vLLM (pid {process.pid}) {exc}; log tail:\n{tail}") from exc
                self._became_ready(card, process)
                return

    async def _launch(self, command: VllmCommand, port: int) -> ManagedProcess:
        argv = command.argv(port)
        self.base_url = self._root_url(port) + "/v1"
        try:
            process = await ManagedProcess.spawn(argv, command.env_additions(), self.log_path)
        except OSError as exc:  # no such executable, not executable, log dir not writable
            raise StartFailed(f"cannot launch {argv[0]!r}: {exc.strerror or exc}") from None
        self._process = process
        process.exited.add_done_callback(self._on_exit)
        state = State.STARTING if self.restarts == 0 else State.UNAVAILABLE
        self.set_status(
            state,
            f"starting vLLM (pid {process.pid}, port {port}, "
            f"max_model_len {command.max_model_len or 'model default'})",
        )
        log.info(
            "model %s: launched vLLM pid %d: %s (log %s)",
            self.name,
            process.pid,
            " ".join(argv),
            self.log_path,
        )
        return process

    async def _retry_command(self, command: VllmCommand, exc: ProcessExited) -> VllmCommand:
        """After the process exited: the command to launch again (auto max_model_len only),
        else StartFailed with the log tail."""
        log_text = await asyncio.to_thread(read_tail, self.log_path, 400, 64_000)
        log_text = log_text.rsplit(LAUNCH_MARKER, 1)[-1]  # this launch's output only
        estimate = estimated_max_model_len(log_text)
        current = command.max_model_len
        if (
            self._max_model_len_setting == "auto"
            and estimate
            and (current is None or estimate < current)
        ):
            log.warning(
                "model %s: max_model_len %s does not fit the KV cache; vLLM estimates "
                "%d: relaunching with max_model_len %d",
                self.name,
                current or "(model default)",
                estimate,
                estimate,
            )
            self.command = command.with_max_model_len(estimate)
            return self.command
        tail = "\n".join(log_text.splitlines()[-20:])[-3000:]
        raise StartFailed(
            f"vLLM exited with code {exc.returncode} before it was ready; "
            f"log tail ({self.log_path}):\n{tail}"
        )

    def _became_ready(self, card: dict[str, Any], process: ManagedProcess) -> None:
        reported = card.get("max_model_len")
        self.served_max_model_len = (
            reported if isinstance(reported, int) else (self.command.max_model_len)
        )
        log.info(
            "model %s: vLLM pid %d ready on %s with max_model_len %s",
            self.name,
            process.pid,
            self.base_url,
            self.served_max_model_len,
        )
        self.set_status(State.READY)

    def _root_url(self, port: int) -> str:
        return f"http://{self.command.host}:{port}"

    # -- liveness ---------------------------------------------------------------------------

    def _on_exit(self, exited: asyncio.Future[int]) -> None:
        """Runs the moment the process exits: not ready at once, so requests get 503."""
        starting = self.status.state in (State.STARTING, State.LOADING)
        if exited.cancelled() or self._stopping or starting:
            return  # a start that fails is reported by the start itself, with its log tail
        self.set_status(State.UNAVAILABLE, f"vLLM exited with code {exited.result()}; restarting")
        self._wake.set()

    async def _watch_until_dead(self) -> str:
        """Probe until the process dies or stops answering; returns why it must restart."""
        process = self._process
        assert process is not None
        failures = 0
        while True:
            woken = asyncio.ensure_future(self._wake.wait())
            waits: set[asyncio.Future[Any]] = {process.exited, woken}
            try:
                await asyncio.wait(
                    waits,
                    timeout=self._policy.liveness_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                woken.cancel()
            self._wake.clear()
            if process.exited.done():
                return f"vLLM (pid {process.pid}) exited with code {process.exited.result()}"
            problem = await self._liveness_problem()
            if problem is None:
                failures = 0
                if not self.status.ready:
                    log.info("model %s: vLLM answers again", self.name)
                    self.set_status(State.READY)
                continue
            failures += 1
            self.set_status(
                State.UNAVAILABLE,
                f"liveness probe failed ({failures}/{self._policy.liveness_failures}): {problem}",
            )
            if failures >= self._policy.liveness_failures and not process.exited.done():
                process.kill()
                return f"vLLM (pid {process.pid}) is wedged ({problem}): killed"

    async def _liveness_problem(self) -> str | None:
        """A real 1-token chat (with a tiny image for vision models); None when it works."""
        try:
            async with self._client.post(
                self.base_url + "/chat/completions",
                json=probe_body(self.upstream_model or self.name, self._policy.probe_image),
                timeout=aiohttp.ClientTimeout(total=self._policy.liveness_timeout),
            ) as response:
                text = (await response.read())[:200].decode(errors="replace")
        except TimeoutError:
            return f"no answer within {self._policy.liveness_timeout:g} s"
        except aiohttp.ClientError as exc:
            return str(exc) or type(exc).__name__
        if response.status >= 500:
            return f"status {response.status}: {text}"
        if response.status >= 400:
            log.warning(
                "model %s: liveness probe refused (%d: %s); set probe_image: false "
                "for text-only models",
                self.name,
                response.status,
                text,
            )
        return None

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        """A broken connection mid-request may mean a dead server: stop routing to it until
        the supervisor has checked (it wakes at once)."""
        try:
            with super()._translate_errors():
                yield
        except UpstreamError:
            if self.status.ready:
                self.set_status(State.UNAVAILABLE, "connection to vLLM lost; checking it")
            self._wake.set()
            raise

    async def exported_metrics(self) -> str | None:
        """vLLM's own /metrics text, fetched now; None while no process answers."""
        process = self._process
        if process is None or process.exited.done():
            return None
        url = self.base_url.removesuffix("/v1") + "/metrics"
        try:
            timeout = aiohttp.ClientTimeout(total=_METRICS_TIMEOUT_S)
            async with self._client.get(url, timeout=timeout) as response:
                return await response.text() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    def describe(self) -> dict[str, Any]:
        process = self._process
        return super().describe() | {
            "pid": process.pid if process and not process.exited.done() else None,
            "url": self.base_url if process else None,
            "max_model_len": self.served_max_model_len or self.command.max_model_len,
            "restarts": self.restarts,
            "replica": self.replica,
            "phase": self.progress.phase.value if self.progress.phase else None,
            "log_file": str(self.log_path),
        }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
