"""`InProcessBackend`: what every kind that runs its model in the gateway's own process shares.

The event loop only validates, queues and awaits. Loading and generation run in one model
thread (`worker.py`), request preparation in worker threads. Requests become rows for the
batcher (`batcher.py`); streaming is per token: the kind's generation hands each row's new text
to `RowHooks.on_text`, which puts it on the request's event queue.

A kind supplies three things:
- `_load_blocking()`, in the model thread: the loaded model and the kind's
  `generate_batch(model, specs, should_stop) -> [RowResult]` (blocking; a row per spec, in order;
  it stops when `should_stop` is set and may end a row early once its `is_cancelled()`);
- `_model_facts(model)`: what was loaded (device, dtype, parameters), for the start-up line,
  `/ready` and `/v1/models`;
- `_prepare(request, model)`: the request checked (its 400s) and turned into a `Prepared`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from vlm_gateway.backends.base import Backend, State
from vlm_gateway.backends.inprocess import loading, output
from vlm_gateway.backends.inprocess.batcher import (
    Batcher,
    Event,
    Pending,
    Prepared,
    Row,
    RowHooks,
    RowResult,
    SpecT,
    Stats,
)
from vlm_gateway.backends.inprocess.memory import release_memory
from vlm_gateway.backends.inprocess.oom import run_freeing_on_oom
from vlm_gateway.backends.inprocess.worker import ModelThread, first_line, threadsafe
from vlm_gateway.core.errors import GatewayError, ServiceUnavailableError
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.core.sse import DONE

ModelT = TypeVar("ModelT")

GenerateBatch = Callable[[ModelT, list[SpecT], threading.Event], list[RowResult]]


class InProcessBackend(Backend, Generic[ModelT, SpecT]):
    label = "in-process"  # the model family, as errors name it (e.g. "BLIP-2")

    # How often a load still running says so (the log, `/ready`'s reason).
    load_progress_every_s = loading.PROGRESS_EVERY_S

    def __init__(
        self,
        name: str,
        model_ref: str,
        *,
        max_batch_size: int,
        batch_wait_ms: float,
        device: str,
        dtype: str,
        loadable: bool = False,
    ) -> None:
        super().__init__(name)
        self.model_ref = model_ref
        self.loadable = loadable  # on demand: start() loads nothing; load() and unload() do
        self._planned = loading.planned(device, dtype)  # what /ready says until loaded
        self._facts: loading.ModelFacts | None = None
        # The kind's own logger, so its lines keep the names they had before the engine.
        self._log = logging.getLogger(type(self).__module__)
        self._batcher: Batcher[SpecT] = Batcher(
            name, self.label, max_batch_size, batch_wait_ms, self._log
        )
        self._stopping = threading.Event()
        self._loading: asyncio.Task[None] | None = None  # the load at start
        self._serving: asyncio.Task[None] | None = None  # the batcher, while loaded
        self._swapping = asyncio.Lock()  # one load or unload at a time
        self._worker: ModelThread | None = None
        self._loaded: ModelT | None = None
        self._generate: GenerateBatch[ModelT, SpecT] | None = None

    @property
    def max_batch_size(self) -> int:
        return self._batcher.max_batch_size

    @property
    def batch_wait_ms(self) -> float:
        return self._batcher.batch_wait * 1000

    @property
    def stats(self) -> Stats:
        return self._batcher.stats

    def describe(self) -> dict[str, Any]:
        """The base fields, then what every in-process kind reports: its model (device, dtype
        and parameters once loaded), batching and batch cap (a kind adds its own)."""
        info = super().describe()
        info.update(
            model=self.model_ref,
            **(self._facts.describe() if self._facts else self._planned),
            max_batch_size=self.max_batch_size,
            batch_wait_ms=self.batch_wait_ms,
            batches=self.stats.batches,
            sequences=self.stats.sequences,
            largest_batch=self.stats.largest_batch,
            queued=self._batcher.queued,
            **self._batcher.cap.describe(),
        )
        return info

    # -- what a kind supplies ---------------------------------------------------------------

    @abstractmethod
    def _load_blocking(self) -> tuple[ModelT, GenerateBatch[ModelT, SpecT]]:
        """In the model thread: load the model; raise with a readable reason on failure."""

    @abstractmethod
    def _model_facts(self, model: ModelT) -> loading.ModelFacts:
        """What was loaded: for the start-up line, /ready and /v1/models."""

    def _how_served(self, model: ModelT) -> str:
        """The start-up line's end: how requests reach the model."""
        return f"batches of up to {self.max_batch_size}"

    @abstractmethod
    async def _prepare(self, request: ChatCompletionRequest, model: ModelT) -> Prepared[SpecT]:
        """Check the request (a 400 for what the kind cannot do) and prepare its rows."""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.loadable:
            self.set_status(State.UNLOADED, "loads on its first request")
            return
        self.set_status(State.STARTING, f"loading {self.model_ref}")
        self._loading = asyncio.create_task(self._load_at_start(), name=f"{self.kind}-{self.name}")

    async def stop(self) -> None:
        self._stopping.set()
        for task in (self._loading, self._serving):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._batcher.fail_queued(self._batcher.shutting_down())
        if self._worker is not None:
            self._worker.close()
        self._loaded = self._generate = None
        await super().stop()

    async def load(self) -> None:
        """On demand: load the weights (in the model thread, as at start) and serve."""
        async with self._swapping:
            await self._start_load_done()
            if self._loaded is not None:
                return
            self.set_status(State.LOADING, f"loading {self.model_ref}")
            try:
                await self._bring_in()
            except Exception as exc:
                await self._release()
                reason = self._load_failed(exc)
                self.set_status(State.UNLOADED, reason)
                raise ServiceUnavailableError(
                    f"The model '{self.name}' could not be loaded: {reason}.", code="load_failed"
                ) from None
            except asyncio.CancelledError:
                self._abandon_worker()  # the thread ends after the load; nothing keeps it
                self.set_status(State.UNLOADED, "the load was cancelled")
                raise

    async def unload(self) -> None:
        """Free the model: wait for the rows already taken (a caller should unload only an
        idle model, but one that does not loses no answer), stop the model thread, drop every
        reference and give the memory back to the device and the OS."""
        async with self._swapping:
            await self._start_load_done()
            if self._loaded is None:
                return
            self.set_status(State.UNAVAILABLE, "unloading: finishing the requests in flight")
            try:
                await self._batcher.drained()
            except asyncio.CancelledError:  # the unload was called off: still loaded, serving
                self.set_status(State.READY)
                raise
            if self._serving is not None:
                self._serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._serving
                self._serving = None
            await self._release()
            self._log.info("model %s: unloaded; it loads again on its next request", self.name)
            self.set_status(State.UNLOADED, "unloaded; loads on its next request")

    async def _load_at_start(self) -> None:
        try:
            await self._bring_in()
        except Exception as exc:
            self.set_status(State.FAILED, self._load_failed(exc))

    async def _start_load_done(self) -> None:
        """Wait for the load `start` began, if it still runs: one load at a time."""
        if self._loading is not None and not self._loading.done():
            await asyncio.shield(self._loading)

    async def _bring_in(self) -> None:
        """Load the model in the model thread (started here when there is none), then serve."""
        planned, started = self._planned, time.monotonic()
        self._log.info(
            "model %s: loading weights from %s (device %s, dtype %s)",
            self.name,
            self.model_ref,
            planned["device"],
            planned["dtype"],
        )
        worker = self._worker = self._worker or ModelThread(f"{self.kind}-{self.name}")
        load = worker.submit(self._load_blocking)
        loaded = await loading.reporting_progress(
            load, self._still_loading, self.load_progress_every_s
        )
        model, self._generate = loaded
        self._loaded, facts = model, self._model_facts(model)
        self._facts = facts
        self._log.info(
            "model %s: %s loaded from %s in %.1f s: %s, %s",
            self.name,
            facts.architecture,
            self.model_ref,
            time.monotonic() - started,
            facts.summary(),
            self._how_served(model),
        )
        self._serving = asyncio.create_task(
            self._batcher.serve(worker, self._generate_blocking), name=f"{self.kind}-{self.name}"
        )
        self.set_status(State.READY)

    async def _release(self) -> None:
        """Drop the model and its thread (a thread's intra-op pool and thread-locals go with
        it), then collect and trim, so the process's memory goes back to its level before."""
        worker = self._abandon_worker()
        if worker is not None:
            await asyncio.to_thread(worker.join)
        await asyncio.to_thread(release_memory)

    def _abandon_worker(self) -> ModelThread | None:
        worker, self._worker = self._worker, None
        self._loaded = self._generate = self._facts = None
        if worker is not None:
            worker.close()
        return worker

    def _load_failed(self, exc: Exception) -> str:
        reason = f"cannot load {self.model_ref}: {first_line(exc)}"
        self._log.error("model %s: %s", self.name, reason)
        return reason

    def _still_loading(self, seconds: float) -> None:
        self._log.info(
            "model %s: still loading weights from %s (%.0f s so far)",
            self.name,
            self.model_ref,
            seconds,
        )
        # STARTING at start, LOADING on demand: only the reason moves on.
        self.set_status(self.status.state, f"loading {self.model_ref} ({seconds:.0f} s so far)")

    def _generate_blocking(self, specs: list[SpecT]) -> list[RowResult]:
        """In the model thread: one batch, with the functions the load brought in."""
        generate, model = self._generate, self._loaded
        if generate is None or model is None:  # stopped while the batch waited for the thread
            raise RuntimeError("the model is not loaded")
        return run_freeing_on_oom(lambda: generate(model, specs, self._stopping))

    # -- requests ---------------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest) -> dict[str, Any]:
        pending = await self._submit(request, events=None)
        try:
            results = await asyncio.gather(*pending.futures)
        finally:
            pending.cancelled = True  # the client went away: queued rows are dropped
        return output.chat_completion(self.name, results, pending.prompt_tokens)

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[bytes]:
        events: asyncio.Queue[Event] = asyncio.Queue()
        pending = await self._submit(request, events=events)
        return self._stream(pending, events, request.wants_usage_in_stream)

    async def _stream(
        self, pending: Pending, events: asyncio.Queue[Event], include_usage: bool
    ) -> AsyncIterator[bytes]:
        writer = output.ChunkWriter(self.name, include_usage)
        try:
            for index in range(len(pending.futures)):
                yield writer.role(index)
            remaining, completion_tokens = len(pending.futures), 0
            while remaining:
                index, item = await events.get()
                if isinstance(item, str):
                    yield writer.content(index, item)
                elif isinstance(item, GatewayError):
                    raise item
                else:
                    remaining -= 1
                    completion_tokens += item.completion_tokens
                    yield writer.finish(index, item.finish_reason)
            if include_usage:
                yield writer.usage(pending.prompt_tokens, completion_tokens)
            yield DONE
        finally:
            pending.cancelled = True

    async def _submit(
        self, request: ChatCompletionRequest, events: asyncio.Queue[Event] | None
    ) -> Pending:
        """Validate, prepare and queue one row per choice; `events` only when streaming."""
        model = self._loaded
        if model is None or not self.status.ready:
            raise ServiceUnavailableError(f"The model '{self.name}' is not ready.")
        with self._batcher.preparing():  # an unload waits for this request's rows too
            prepared = await self._prepare(request, model)
            loop = asyncio.get_running_loop()
            pending = Pending(
                futures=[loop.create_future() for _ in range(prepared.choices)],
                prompt_tokens=prepared.prompt_tokens,
                events=events,
            )
            for index in range(prepared.choices):
                hooks = RowHooks(_on_text(events, index), lambda: pending.cancelled)
                self._batcher.put(Row(prepared.row(index, hooks), pending, index))
        return pending


def _on_text(events: asyncio.Queue[Event] | None, index: int) -> Callable[[str], None] | None:
    """Choice `index`'s new text onto its request's queue, from the model thread."""
    if events is None:
        return None
    return threadsafe(lambda text: events.put_nowait((index, text)))
