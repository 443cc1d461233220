"""Image preparation off the event loop and in parallel: a process pool sized to the cores.

Decoding and resizing hold the GIL for most of their time, so threads would not run them in
parallel; processes do. One `ImagePreparer` per app (or per caption run), built from settings
and closed with it. Workers start on first use only (a gateway whose models never resize
starts none) from a fork server, never by forking the server itself (its threads would be
forked mid-flight).

A worker that dies (a pathological file, the OOM killer) breaks a `ProcessPoolExecutor` for
good: it fails every call in it and every later submit. The preparer then throws that executor
away (the next call builds a new one) and tries each call caught in the break once more, alone
in a process of its own, so that the file that killed the worker cannot take innocent calls
down with it a second time: it is an `ImageError` for its own image, never a stall or a crash.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import TypeVar

from vlm_gateway.core.image_errors import ImageError

T = TypeVar("T")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class ImagePreparer:
    """Runs picklable preparation functions (images/prepare.py) in worker processes; with
    `workers=0` in a thread instead (no processes at all)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = available_cores() if workers is None else workers
        self.rebuilds = 0  # pools thrown away after a worker died (for tests and logs)
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False
        # Calls tried again alone after a break: at most one process per core at a time.
        self._lone_slots = asyncio.Semaphore(max(1, self.workers))

    async def run(self, what: str, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` in a worker. Its ImageError comes back as is; anything else it
        raises, or a worker that dies on it twice, becomes an ImageError naming `what`."""
        if self.workers == 0:
            return await asyncio.to_thread(_guarded, what, function, *args)
        executor = self._current()
        try:
            return await asyncio.wrap_future(executor.submit(_guarded, what, function, *args))
        except BrokenProcessPool:
            self._discard(executor)
        async with self._lone_slots:
            return await self._run_alone(what, function, *args)

    async def aclose(self) -> None:
        """Cancel what has not started, wait for what has, stop the workers."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    def _current(self) -> ProcessPoolExecutor:
        if self._closed:
            raise RuntimeError("the image preparer is closed")
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=_context())
        return self._executor

    async def _run_alone(self, what: str, function: Callable[..., T], *args: object) -> T:
        alone = ProcessPoolExecutor(1, mp_context=_context())
        try:
            return await asyncio.wrap_future(alone.submit(_guarded, what, function, *args))
        except BrokenProcessPool:
            raise ImageError(
                f"{what} could not be prepared: the process preparing it stopped "
                "(the file may be corrupt)."
            ) from None
        finally:
            alone.shutdown(wait=False)

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        """Drop a broken executor, once: several calls see the same break."""
        if self._executor is executor:
            self._executor = None
            self.rebuilds += 1
            executor.shutdown(wait=False, cancel_futures=True)


def _context() -> BaseContext:
    """Workers forked from a fork server (forking the gateway itself would copy its threads
    mid-flight), or spawned where there is none."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _guarded(what: str, function: Callable[..., T], *args: object) -> T:
    """Runs in the worker: only our own ImageError (or OSError, for unreadable files) goes
    back; any other exception's text could carry decoder internals, so it does not."""
    try:
        return function(*args)
    except (ImageError, OSError):
        raise
    except Exception:
        raise ImageError(f"{what} could not be prepared; it may be corrupt.") from None
