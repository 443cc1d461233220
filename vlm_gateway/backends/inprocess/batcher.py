"""The micro-batcher of in-process backends: each request is one row per choice; rows that
arrive within `batch_wait_ms` of the first queued one, up to `max_batch_size`, are generated
together in the model thread, and each row's outcome goes back to its request.

What a row holds is the kind's business (`SpecT`): the batcher only queues rows, hands a
batch's specs to the kind's generation and delivers what comes back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from vlm_gateway.backends.inprocess.oom import BatchCap, DeviceOutOfMemory, out_of_memory_error
from vlm_gateway.backends.inprocess.worker import ModelThread
from vlm_gateway.core.errors import GatewayError, ServiceUnavailableError

SpecT = TypeVar("SpecT")


@dataclass
class RowResult:
    """One generated choice, as a kind's generation returns it."""

    text: str
    finish_reason: str  # "stop" | "length"
    completion_tokens: int


# What a streaming request's queue carries, per choice: new text, then its result or error.
Event = tuple[int, str | RowResult | GatewayError]


@dataclass(frozen=True)
class RowHooks:
    """What the engine gives each row a kind builds. Both are called from the model thread."""

    on_text: Callable[[str], None] | None  # new text as generated; None when not streaming
    is_cancelled: Callable[[], bool]  # the client went away: the row may stop early


@dataclass(frozen=True)
class Prepared(Generic[SpecT]):
    """A request checked and prepared by its kind: the prompt's token count, how many choices,
    and how to build choice `index`'s row."""

    prompt_tokens: int
    choices: int
    row: Callable[[int, RowHooks], SpecT]


@dataclass(eq=False)
class Pending:
    """One request in flight: a future per choice and, when streaming, its event queue."""

    futures: list[asyncio.Future[RowResult]]
    prompt_tokens: int
    events: asyncio.Queue[Event] | None = None
    cancelled: bool = False

    def deliver(self, index: int, outcome: RowResult | GatewayError) -> None:
        future = self.futures[index]
        if not future.done():
            if isinstance(outcome, GatewayError):
                future.set_exception(outcome)
                future.exception()  # retrieved here: a cancelled reader never will
            else:
                future.set_result(outcome)
        if self.events is not None:
            self.events.put_nowait((index, outcome))


@dataclass(eq=False)
class Row(Generic[SpecT]):
    spec: SpecT
    pending: Pending
    index: int


@dataclass
class Stats:
    batches: int = 0
    sequences: int = 0
    largest_batch: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


class Batcher(Generic[SpecT]):
    """Rows in, batches out, one batch at a time: the next is taken as soon as one ends.
    `label` names the model family in errors (e.g. "BLIP-2"); `log` is the kind's logger."""

    def __init__(
        self,
        name: str,
        label: str,
        max_batch_size: int,
        batch_wait_ms: float,
        log: logging.Logger,
    ) -> None:
        self.name, self.label, self.log = name, label, log
        self.max_batch_size = max_batch_size
        self.cap = BatchCap(max_batch_size)  # smaller for a while after an out-of-memory
        self.batch_wait = batch_wait_ms / 1000
        self.stats = Stats()
        self._queue: asyncio.Queue[Row[SpecT]] = asyncio.Queue()
        # Rows queued, being gathered or being generated: an unload waits until none is left.
        self._unfinished = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def put(self, row: Row[SpecT]) -> None:
        self._unfinished += 1
        self._idle.clear()
        self._queue.put_nowait(row)

    @contextlib.contextmanager
    def preparing(self) -> Iterator[None]:
        """Counts a request whose rows are being prepared as unfinished, so that `drained`
        cannot return between its admission and its `put`."""
        self._unfinished += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._finished(1)

    async def drained(self) -> None:
        """Return once every row put so far has been answered (or dropped as cancelled)."""
        await self._idle.wait()

    def _finished(self, rows: int) -> None:
        self._unfinished -= rows
        if self._unfinished <= 0:
            self._unfinished = 0
            self._idle.set()

    @property
    def queued(self) -> int:
        """Rows waiting for a batch."""
        return self._queue.qsize()

    async def serve(
        self, worker: ModelThread, generate: Callable[[list[SpecT]], list[RowResult]]
    ) -> None:
        """Forever: gather a batch, run `generate` (blocking) on it in the model thread."""
        while True:
            gathered: list[Row[SpecT]] = []
            try:
                await self._gather(gathered)
                batch = [row for row in gathered if not row.pending.cancelled]
                if batch:
                    await self._run_batch(worker, batch, generate)
            except asyncio.CancelledError:
                for row in gathered:  # stopped: every row taken from the queue is answered
                    row.pending.deliver(row.index, self.shutting_down())
                raise
            finally:
                self._finished(len(gathered))

    async def _gather(self, batch: list[Row[SpecT]]) -> None:
        """Wait for one row, then gather more for up to `batch_wait_ms`, up to the limit."""
        batch.append(await self._queue.get())
        deadline = asyncio.get_running_loop().time() + self.batch_wait
        limit = self.cap.limit
        while len(batch) < limit:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break

    async def _run_batch(
        self,
        worker: ModelThread,
        batch: list[Row[SpecT]],
        generate: Callable[[list[SpecT]], list[RowResult]],
    ) -> None:
        specs = [row.spec for row in batch]
        try:
            results = await worker.submit(lambda: generate(specs))
        except DeviceOutOfMemory as exc:
            self._out_of_memory(batch, exc.reason)
            return
        except Exception as exc:
            self.log.exception(
                "model %s: generation failed for a batch of %d", self.name, len(batch)
            )
            error = GatewayError(
                f"{self.label} generation failed ({type(exc).__name__}); "
                "the gateway log has the details."
            )
            for row in batch:
                row.pending.deliver(row.index, error)
            return
        self._count(len(batch))
        for row, result in zip(batch, results, strict=True):
            row.pending.deliver(row.index, result)

    def _out_of_memory(self, batch: list[Row[SpecT]], reason: str) -> None:
        """Only this batch's requests fail (a 503 to retry); later batches are smaller."""
        cap = self.cap.shrink(len(batch))
        self.log.warning(
            "model %s: out of memory in a batch of %d (%s): its requests get 503; batches of "
            "up to %d for the next %g s",
            self.name,
            len(batch),
            reason,
            cap,
            self.cap.recovery_s,
        )
        for row in batch:
            row.pending.deliver(row.index, out_of_memory_error(self.name, len(batch), cap))

    def _count(self, size: int) -> None:
        stats = self.stats
        stats.batches += 1
        stats.sequences += size
        stats.largest_batch = max(stats.largest_batch, size)

    def shutting_down(self) -> ServiceUnavailableError:
        return ServiceUnavailableError(f"The model '{self.name}' is shutting down.")

    def fail_queued(self, error: GatewayError) -> None:
        while not self._queue.empty():
            row = self._queue.get_nowait()
            row.pending.deliver(row.index, error)
            self._finished(1)
