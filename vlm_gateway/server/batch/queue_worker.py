"""One gateway's share of the batches in a shared queue (the PostgreSQL store): lease rows up to
`concurrency_per_model` at a time, run each like any batch line, commit its result, renew the
leases of the rows still running, and move on whatever batch is due (finish it when its last
row is done, expire it, finish a cancel, validate what a dead gateway left validating).
Whichever gateway records a batch's last row finishes it; the store makes that exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

import orjson

from vlm_gateway.config.settings import BatchSettings
from vlm_gateway.server.batch.line_caller import LineCaller, expired_line
from vlm_gateway.server.batch.protocol import Batch, BatchError
from vlm_gateway.server.batch.store_base import (
    BatchStore,
    LeasedRow,
    ResultRow,
    SharedQueue,
    new_id,
)
from vlm_gateway.server.batch.validation import parse_line
from vlm_gateway.server.door.keys import Caller

log = logging.getLogger(__name__)

_POLL_S = 0.25  # how often an idle gateway looks for rows (submit and finished rows wake it)
_STALE_VALIDATION_S = 60.0  # a batch validating this long: its gateway died, validate it here

RowKey = tuple[str, str]  # (batch id, custom_id)


class QueueWorker:
    def __init__(
        self,
        store: BatchStore,
        queue: SharedQueue,
        lines: LineCaller,
        settings: BatchSettings,
        owner_of: Callable[[str], Awaitable[Caller]],
        validate: Callable[[Batch], Awaitable[Batch]],
    ) -> None:
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._store = store
        self._queue = queue
        self._lines = lines
        self._lease_s = settings.lease_seconds
        self._capacity = settings.concurrency_per_model
        self._owner_of = owner_of
        self._validate = validate
        self._running: dict[RowKey, asyncio.Task[None]] = {}
        self._batches: dict[str, tuple[str, Caller]] = {}  # batch id -> (endpoint, owner)
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._due_checked = 0.0  # time.monotonic() of the last look for batches due

    def start(self) -> None:
        for loop in (self._take_rows, self._renew_leases):
            self._loops.append(asyncio.create_task(loop(), context=contextvars.Context()))

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, batch_id: str) -> None:
        """Stop this gateway's requests of a batch being cancelled; the batch is finished by
        whichever gateway sees it due first."""
        for (owner_batch, _), task in list(self._running.items()):
            if owner_batch == batch_id:
                task.cancel()
        self.wake()

    async def stop(self) -> None:
        """No new rows; the rows in flight are stopped and released at once, so another
        gateway takes them (a result committed already stays, and is never written twice)."""
        running = [*self._loops, *self._running.values()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._loops.clear()
        await self._queue.release(self.id)

    # -- the loops ---------------------------------------------------------------------------

    async def _take_rows(self) -> None:
        while True:
            self._wake.clear()
            try:
                full = await self._round()
            except Exception:
                log.exception("batch queue: a round failed; trying again")
                full = False
            if not full:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _POLL_S)

    async def _round(self) -> bool:
        """Lease what there is room for; True when there may be more to take at once."""
        free = self._capacity - len(self._running)  # at 0, a finished row wakes the loop
        rows = await self._queue.lease(self.id, free, self._lease_s) if free > 0 else []
        for row in rows:
            key = (row.batch_id, row.custom_id)
            task = asyncio.create_task(self._run_row(row), context=contextvars.Context())
            self._running[key] = task
            task.add_done_callback(functools.partial(self._row_done, key))
        # Every _POLL_S, busy or not: batches due (cancelled, expired, or whose last row's
        # gateway died before finishing them) must not wait for the queue to drain.
        if time.monotonic() - self._due_checked >= _POLL_S:
            self._due_checked = time.monotonic()
            await self._move_due()
        return free > 0 and len(rows) == free

    def _row_done(self, key: RowKey, task: asyncio.Task[None]) -> None:
        self._running.pop(key, None)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            # Its lease is no longer renewed: the row is taken again once it runs out.
            log.error("batch row %s of %s failed", key[1], key[0], exc_info=task.exception())

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                await self._queue.renew(self.id, list(self._running), self._lease_s)
            except Exception:
                log.exception("batch queue: renewing leases failed; trying again")

    # -- rows and batches ----------------------------------------------------------------------

    async def _run_row(self, row: LeasedRow) -> None:
        endpoint, owner = await self._batch_info(row.batch_id)
        line = parse_line(row.line_no, row.body, endpoint)
        if isinstance(line, BatchError):  # validated when split out: the row is corrupt
            result = _error_row(row, line)
        else:
            await self._lines.slots.acquire(line.model)
            result = await self._lines.run(row.batch_id, line, owner)
        if await self._queue.record(result):
            await self._finish(row.batch_id, "completed")

    async def _batch_info(self, batch_id: str) -> tuple[str, Caller]:
        if batch_id not in self._batches:
            batch = await self._store.get_batch(batch_id)
            if batch is None:
                raise KeyError(f"batch {batch_id} is not in the store")
            self._batches[batch_id] = (batch.endpoint, await self._owner_of(batch_id))
        return self._batches[batch_id]

    async def _move_due(self) -> None:
        for batch_id, what in await self._queue.due(_STALE_VALIDATION_S):
            if what == "validate":
                batch = await self._store.get_batch(batch_id)
                if batch is not None and batch.status == "validating":
                    log.info("validating batch %s, left validating by another gateway", batch_id)
                    await self._validate(batch)
            else:
                await self._finish(batch_id, what)

    async def _finish(self, batch_id: str, final: str) -> None:
        if final != "completed":
            for (owner_batch, _), task in list(self._running.items()):
                if owner_batch == batch_id and task is not asyncio.current_task():
                    task.cancel()
        batch = await self._queue.finish(batch_id, final, expired_line)
        if batch is not None:
            log.info("batch %s %s", batch_id, final)
        if final != "completed" or batch is not None:  # over, here or elsewhere
            self._batches.pop(batch_id, None)


def _error_row(row: LeasedRow, error: BatchError) -> ResultRow:
    line = {
        "id": new_id("batch_req_"),
        "custom_id": row.custom_id,
        "response": None,
        "error": {"code": error.code, "message": error.message},
    }
    return ResultRow(row.batch_id, row.custom_id, False, "", orjson.dumps(line))
