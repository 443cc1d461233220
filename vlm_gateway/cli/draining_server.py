"""uvicorn's server with the gateway's graceful drain (docs/reliability.md, "Graceful drain").

On SIGTERM (or SIGINT), at once, in one step on the event loop: /ready answers 503
"draining", the listening socket is closed (new connections are refused), the batch
runner is told to stop taking rows and loads on demand under way are stopped (their waiting
requests get 503 `shutting_down`; backends/ondemand/). Requests in flight, JSON and streams,
then have until `shutdown_grace` after the signal to finish; answers given meanwhile carry
`connection: close`. What still runs then is cut (a 503, or an error event that ends the stream:
server/drain.py). Then the app's lifespan stops: batch runner, store, backends (managed vLLM
last), and the process exits 0.

A second SIGTERM or SIGINT during the drain stops at once: the managed vLLM process groups
are killed (nothing orphaned) and the process exits 128 + the signal's number. (Under systemd,
use `KillMode=mixed`: the default sends SIGTERM to every process of the unit at once, vLLM's
included.)

Once started, it also takes what the startup made (the app, its backends, imported modules)
out of the cyclic garbage collector's reach with `gc.freeze()`: those objects live as long as
the process, and every full collection walked them all again, in the middle of requests.
Measured (docs/benchmarks-history.md, run E): p99 at 64 in flight 68 -> 26 ms (text) and
125 -> 79 ms (image), 7-12% more requests/s. And it keeps the requests' large buffers on
glibc's heap (allocator.py).

Used by `serve` (one process) and by each worker of `serve --workers N`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from vlm_gateway.cli.allocator import keep_large_buffers_on_heap
from vlm_gateway.core.logs import flush_log_handlers
from vlm_gateway.server.drain import Drain
from vlm_gateway.server.state import state_of

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_POLL_S = 0.02
_CUT_SETTLE_S = 2.0  # for cut requests to send their error and end


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        app: FastAPI,
        drain: Drain,
        grace_s: float,
        stop_on_second_signal: bool = True,
    ) -> None:
        super().__init__(config)
        self._app = app
        self._drain = drain
        self._grace_s = grace_s
        self._stop_on_second_signal = stop_on_second_signal
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled = False
        self._batches_stopping: asyncio.Future[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # the app's startup went through: what it made stays to the end
            gc.collect()
            gc.freeze()
            keep_large_buffers_on_heap()  # requests' large buffers: no mmap/munmap each

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Ours instead of uvicorn's, which waits for connections (not requests), cuts streams
        silently and re-raises the signal at the end (so the exit status was not 0)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signalled:
            if self._stop_on_second_signal:
                self._stop_now(signum)
            return
        self._signalled = True
        self.should_exit = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        """/ready 503, no new connections, batches stop taking rows: all in one loop step."""
        if self._drain.draining:
            return
        self._drain.begin()
        self._close_listeners()
        with contextlib.suppress(RuntimeError):  # the app's lifespan has not started
            state = state_of(self._app)
            self._batches_stopping = asyncio.ensure_future(state.batch_runner.stop())
            state.loader.shut()  # loads on demand under way stop; none starts any more
        log.info(
            "draining: /ready answers 503, no new connections; %d request(s) in flight get up "
            "to %g s",
            self._drain.in_flight(),
            self._grace_s,
        )

    def _close_listeners(self) -> None:
        """New connections are refused from now on (closing twice is harmless)."""
        for server in getattr(self, "servers", []):  # none before uvicorn's startup ends
            server.close()

    def _stop_now(self, signum: int) -> None:
        """The second signal: kill the managed vLLM process groups and exit, now."""
        os.write(2, f"signal {signum} during the drain: stopping at once\n".encode())
        for pgid in managed_process_groups(self._app):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        flush_log_handlers()  # lines gathered this turn (core/logs.py)
        os._exit(128 + signum)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._begin_drain()  # also when the exit came another way than a signal
        self._close_listeners()  # also those made after a signal during the startup
        for sock in sockets or []:
            sock.close()
        began = self._drain.began_at or time.monotonic()
        log.info("waiting for %d request(s) in flight", self._drain.in_flight())
        await _wait_until(lambda: self._drain.in_flight() == 0, began + self._grace_s)
        if self._drain.in_flight():
            count = self._drain.cut()
            log.warning("shutdown_grace (%g s) over: %d request(s) cut", self._grace_s, count)
            await _wait_until(
                lambda: self._drain.in_flight() == 0, time.monotonic() + _CUT_SETTLE_S
            )
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle keep-alive ones close now
        await _wait_until(lambda: not self.server_state.tasks, time.monotonic() + _CUT_SETTLE_S)
        for task in self.server_state.tasks:
            task.cancel()
        if self._batches_stopping is not None:
            await self._batches_stopping
        log.info("drained in %.2f s; stopping the models", time.monotonic() - began)
        await self.lifespan.shutdown()  # batch runner, store, then backends: vLLM last


async def _wait_until(done: Callable[[], bool], deadline: float) -> None:
    while not done() and time.monotonic() < deadline:
        await asyncio.sleep(_POLL_S)


def managed_process_groups(app: FastAPI) -> list[int]:
    """The process groups of the vLLM processes the app runs (each leads its own group)."""
    try:
        registry = state_of(app).registry
    except RuntimeError:
        return []
    pids = (backend.describe().get("pid") for backend in registry.backends())
    return [pid for pid in pids if isinstance(pid, int)]


def serve_draining(
    app: FastAPI,
    grace_s: float,
    sockets: list[socket.socket] | None = None,
    *,
    stop_on_second_signal: bool = True,
    **config: Any,
) -> None:
    """Serve `app` until SIGTERM/SIGINT, then drain (see the module); returns when done.
    `config`: uvicorn.Config's keywords. A worker of `serve --workers N` does not stop at a
    second signal: Ctrl-C reaches it and then its supervisor's SIGTERM, and the supervisor
    kills it itself at a second Ctrl-C."""
    drain = Drain()
    server_config = uvicorn.Config(drain.wrap(app), **config)
    server = DrainingServer(server_config, app, drain, grace_s, stop_on_second_signal)
    server.run(sockets=sockets)
