"""An in-process backend's model thread, and the bridges between it and the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

# A job: the loop that awaits it, the future to settle there, and the work; None: stop.
_Job = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]


class ModelThread:
    """The one long-lived thread that loads a model and runs all its batches. Long-lived,
    because torch's intra-op (OpenMP) threads belong to the calling thread: a fresh thread per
    batch started a fresh set each time, and throughput fell tenfold within minutes. A daemon,
    so a load still running when the gateway exits does not hold the process open."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], _T]) -> asyncio.Future[_T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._jobs.put((loop, future, fn))
        return future

    def close(self) -> None:
        """The thread ends once the jobs already submitted are done."""
        self._jobs.put(None)

    def join(self) -> None:
        """Blocking: wait for the thread to end (after `close`)."""
        self._thread.join()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn = job
            try:
                outcome = (True, fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed while we worked
                loop.call_soon_threadsafe(_settle, future, *outcome)
            # The last job's result (a loaded model) must not live on in this frame while the
            # thread waits for the next: an unload could not give its memory back.
            del job, future, fn, outcome


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if not future.done():
        future.set_result(value) if ok else future.set_exception(value)


def threadsafe(callback: Callable[[str], None]) -> Callable[[str], None]:
    """`callback`, callable from any thread: it runs on the current event loop."""
    loop = asyncio.get_running_loop()

    def call(text: str) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, text)

    return call


def first_line(exc: BaseException) -> str:
    """The first line of an error raised in the model thread, for logs and `/ready` (a
    loader's or allocator's message can run to pages)."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."
