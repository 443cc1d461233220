"""`serve --workers N`: one supervisor process and N worker processes on one listening socket.

The supervisor binds the public socket and runs the backplane: the gateway app on 127.0.0.1,
which owns the managed vLLM processes, in-process models and the batch runner. Workers are
`python -m vlm_gateway.cli.worker` processes that inherit the socket (the kernel hands each
new connection to one of them) and reach those models through the backplane
(vlm_gateway/server/workers/). A worker that dies is started again, with a growing pause if
it keeps dying; the backplane, and so every vLLM process, is untouched. SIGTERM (or Ctrl-C):
the socket is closed and the batch runner stops taking rows, workers drain (each as one
process does: cli/draining_server.py), then the backplane stops (managed vLLM last) and the
supervisor exits 0. A second SIGTERM or Ctrl-C stops at once (workers and vLLM killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from vlm_gateway.cli.draining_server import managed_process_groups
from vlm_gateway.cli.worker import SPEC_ENV, WorkerSpec
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.logs import flush_log_handlers
from vlm_gateway.core.metrics import MULTIPROCESS_ENV
from vlm_gateway.server.app import create_app
from vlm_gateway.server.door.shared_limits import SharedUsageTable, table_path
from vlm_gateway.server.state import state_of
from vlm_gateway.server.workers.backplane import backplane_extension
from vlm_gateway.server.workers.plan import BackplaneLink, backplane_settings

log = logging.getLogger(__name__)

_WATCH_INTERVAL_S = 0.2
_QUICK_DEATH_S = 10.0  # a worker dead sooner than this after its start is crash-looping
_MAX_RESTART_PAUSE_S = 30.0


def parse_workers(value: str) -> int:
    """`auto`: one per core this process may run on; else a whole number >= 1."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--workers takes a whole number >= 1 or 'auto', not {value!r}")
    return int(value)


def serve_with_workers(
    settings: GatewaySettings, config: Path | None, overrides: dict[str, Any], workers: int
) -> int:
    """Run until SIGTERM/SIGINT; the exit status."""
    runtime = Path(settings.data_dir) / "run" / f"supervisor-{os.getpid()}"
    _sweep_runtime_dirs(runtime.parent)
    (runtime / "metrics").mkdir(parents=True)
    try:
        SharedUsageTable.create(table_path(runtime), workers)
        public = _listening_socket(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        shutil.rmtree(runtime, ignore_errors=True)
        return 1
    try:
        supervisor = _Supervisor(settings, config, overrides, workers, runtime)
        return asyncio.run(supervisor.run(public))
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def _sweep_runtime_dirs(parent: Path) -> None:
    """Remove what supervisors that are gone left (one killed with SIGKILL cannot clean up),
    this one's own stale directory (a reused pid) included: metrics files start empty."""
    for leftover in parent.glob("supervisor-*"):
        pid = leftover.name.removeprefix("supervisor-")
        if not pid.isdigit() or int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(leftover, ignore_errors=True)


class _QuietServer(uvicorn.Server):
    """The backplane's server: signals are the supervisor's, which stops it last."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.quick_deaths = 0
        self.start_after = 0.0


class _Supervisor:
    def __init__(
        self,
        settings: GatewaySettings,
        config: Path | None,
        overrides: dict[str, Any],
        workers: int,
        runtime: Path,
    ) -> None:
        self._settings = settings
        self._config = config
        self._overrides = overrides
        self._workers = [_Worker(index) for index in range(workers)]
        self._runtime = runtime
        self._stop = asyncio.Event()

    async def run(self, public: socket.socket) -> int:
        backplane_socket = _listening_socket("127.0.0.1", 0)
        port = backplane_socket.getsockname()[1]
        link = BackplaneLink(f"http://127.0.0.1:{port}", BackplaneLink.new_token())
        app = create_app(backplane_settings(self._settings, link), extension=backplane_extension())
        backplane = _QuietServer(
            uvicorn.Config(
                app,
                log_level=self._settings.log_level,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=self._settings.shutdown_grace,  # type: ignore[arg-type]
            )
        )
        serving = asyncio.create_task(backplane.serve(sockets=[backplane_socket]))
        while not backplane.started:
            if serving.done():
                return 1  # its lifespan failed to start; uvicorn has said why
            await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum, app)
        log.info(
            "supervisor: %d workers on %s:%d, backplane on 127.0.0.1:%d",
            len(self._workers),
            self._settings.host,
            public.getsockname()[1],
            port,
        )
        await self._keep_workers(public, link)
        public.close()  # the workers' copies close as they drain: no new connections
        # The batch runner stops taking rows now, as in one process (cli/draining_server.py).
        batches = asyncio.ensure_future(state_of(app).batch_runner.stop())
        await self._stop_workers()
        await batches
        backplane.should_exit = True  # batch runner, then backends (managed vLLM last)
        await serving
        return 0

    def _on_signal(self, signum: int, app: FastAPI) -> None:
        """The first SIGTERM/SIGINT drains; a second one stops at once: workers and the
        managed vLLM process groups are killed, nothing is left behind."""
        if not self._stop.is_set():
            self._stop.set()
            return
        log.warning("signal %d during the drain: stopping at once", signum)
        for worker in self._workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.kill()
        for pgid in managed_process_groups(app):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        flush_log_handlers()  # lines gathered this turn (core/logs.py)
        os._exit(128 + signum)

    async def _keep_workers(self, public: socket.socket, link: BackplaneLink) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for worker in self._workers:
                self._check(worker, now, public, link)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), _WATCH_INTERVAL_S)

    def _check(
        self, worker: _Worker, now: float, public: socket.socket, link: BackplaneLink
    ) -> None:
        process = worker.process
        if process is not None and process.poll() is not None:
            lived = now - worker.started_at
            worker.quick_deaths = worker.quick_deaths + 1 if lived < _QUICK_DEATH_S else 0
            pause = _restart_pause(worker.quick_deaths)
            log.warning(
                "worker %d (pid %d) exited with %s; starting it again in %.1f s",
                worker.index,
                process.pid,
                process.returncode,
                pause,
            )
            worker.process, worker.start_after = None, now + pause
        if worker.process is None and now >= worker.start_after:
            worker.process = self._spawn(worker.index, public, link)
            worker.started_at = now

    def _spawn(
        self, index: int, public: socket.socket, link: BackplaneLink
    ) -> subprocess.Popen[bytes]:
        spec = WorkerSpec(
            str(self._config) if self._config else None,
            self._overrides,
            public.fileno(),
            index,
            str(self._runtime),
            link.url,
            link.token,
        )
        env = {
            **os.environ,
            SPEC_ENV: spec.to_env(),
            # Each worker's counts in its own file there; any of them reads them all.
            MULTIPROCESS_ENV: str(self._runtime / "metrics"),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "vlm_gateway.cli.worker"], env=env, pass_fds=[public.fileno()]
        )
        log.info("worker %d started (pid %d)", index, process.pid)
        return process

    async def _stop_workers(self) -> None:
        """SIGTERM to all: each finishes its open requests within shutdown_grace."""
        running = [w.process for w in self._workers if w.process and w.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.shutdown_grace + 5.0
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for process in running:
            if process.poll() is None:
                log.warning("worker pid %d did not stop in time: killed", process.pid)
                process.kill()
                process.wait()


def _restart_pause(quick_deaths: int) -> float:
    """At once after a death; 0.5, 1, 2 ... 30 s while it keeps dying just after its start."""
    if quick_deaths <= 1:
        return 0.0
    return float(min(_MAX_RESTART_PAUSE_S, 0.5 * 2 ** (quick_deaths - 2)))


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
