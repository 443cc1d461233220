"""Runs batches in the background through the same BackendRegistry as live traffic.

Per model, batch requests only fill what live requests leave of `concurrency_per_model`, so a
vLLM backend's own batch stays full while a live request never queues behind a batch. Each
result is committed as it completes (store.add_result); on start, unfinished batches resume
and skip every custom_id already stored, so none is ever written twice.

With a store shared by many gateways (PostgreSQL: `store.queue()` is not None), a batch's rows
are split out of its input file when it is validated, and every gateway's QueueWorker
(queue_worker.py) leases and runs them; docs/batch.md, "PostgreSQL".

A batch runs as its owner (the key that created it): its lines may name only models the owner
may call, checked when the batch is validated and again for each line it runs (the keys may
have changed across a restart).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from vlm_gateway.backends.ondemand.manager import OnDemandLoader
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.settings import BatchSettings
from vlm_gateway.core.metrics import Metrics
from vlm_gateway.server.batch.line_caller import LineCaller, ModelSlots, Prepare, expired_line
from vlm_gateway.server.batch.protocol import Batch, BatchErrors
from vlm_gateway.server.batch.queue_worker import QueueWorker
from vlm_gateway.server.batch.store_base import BatchStore
from vlm_gateway.server.batch.validation import (
    BatchLine,
    input_rows,
    read_requests,
    validate_input,
)
from vlm_gateway.server.door.keys import Caller
from vlm_gateway.server.model_access import allowed_models

log = logging.getLogger(__name__)

# Who an owner's name stands for now (KeyRing.caller_named).
Callers = Callable[[str], Caller]

__all__ = ["BatchRunner", "Callers", "ModelSlots", "Prepare"]


class BatchRunner:
    def __init__(
        self,
        store: BatchStore,
        registry: BackendRegistry,
        settings: BatchSettings,
        prepare_chat: Prepare | None = None,
        *,
        metrics: Metrics | None = None,
        callers: Callers = Caller,  # by default every owner may call every model
        loader: OnDemandLoader | None = None,  # loads on-demand models for their lines
    ) -> None:
        self._store = store
        self._callers = callers
        self._registry = registry
        self._settings = settings
        self._slots = ModelSlots(registry, settings.concurrency_per_model)
        self._lines = LineCaller(registry, self._slots, prepare_chat, metrics, loader)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        queue = store.queue()
        self._worker = (
            None
            if queue is None
            else QueueWorker(store, queue, self._lines, settings, self._owner, self.validate)
        )

    async def start(self) -> None:
        """Resume every batch a previous run (or crash) left unfinished; with a shared queue,
        start taking rows from it (every gateway's unfinished batches alike)."""
        if self._worker is not None:
            self._worker.start()
            return
        for batch_id in await self._store.active_batch_ids():
            log.info("resuming batch %s", batch_id)
            self.submit(batch_id)

    async def stop(self) -> None:
        """Stop taking new work. Requests in flight are stopped; none is lost or doubled: what
        is done is committed, the rest resumes on the next start or, with a shared queue, is
        released at once for another gateway to take."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._worker is not None:
            await self._worker.stop()

    def submit(self, batch_id: str) -> None:
        if self._worker is None:
            self._track(batch_id, self._drive(batch_id))
        else:  # validate it here; its rows then go to every gateway
            self._track(batch_id, self._validate_shared(batch_id))

    async def cancel(self, batch_id: str) -> Batch:
        """Mark the batch cancelling and return; in-flight requests are stopped and what is
        done is written out in the background."""
        batch = await self._store.update_batch(
            batch_id, status="cancelling", cancelling_at=int(time.time())
        )
        running = self._tasks.get(batch_id)
        if self._worker is None:
            self._track(batch_id, self._cancel_then_finish(batch_id, running))
        else:
            if running is not None:
                running.cancel()
            self._worker.cancel(batch_id)
        return batch

    # -- one batch ---------------------------------------------------------------------------

    def _track(self, batch_id: str, work: Coroutine[Any, Any, None]) -> None:
        # A fresh context: the batch outlives the request that submitted it, and its lines
        # bind their own request ids (LineCaller.run).
        task = asyncio.create_task(work, name=f"batch-{batch_id}", context=contextvars.Context())
        self._tasks[batch_id] = task
        task.add_done_callback(lambda done: self._forget(batch_id, done))

    def _forget(self, batch_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(batch_id) is task:
            del self._tasks[batch_id]
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "batch %s stopped on an error; it resumes on the next start",
                batch_id,
                exc_info=task.exception(),
            )

    async def _cancel_then_finish(self, batch_id: str, running: asyncio.Task[None] | None) -> None:
        if running is not None:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        await self._finish(batch_id, "cancelled")

    async def _batch(self, batch_id: str) -> Batch:
        """A batch this runner was handed: it exists, or the store lost it (the task fails)."""
        batch = await self._store.get_batch(batch_id)
        if batch is None:
            raise KeyError(f"batch {batch_id} is not in the store")
        return batch

    async def _drive(self, batch_id: str) -> None:
        batch = await self._batch(batch_id)
        if batch.status == "validating":
            batch = await self.validate(batch)
        if batch.status == "in_progress":
            if batch.expires_at is None:  # create_batch always sets it: the row is corrupt
                raise ValueError(f"batch {batch_id} has no expires_at")
            remaining = batch.expires_at - time.time()
            deadline = asyncio.timeout(max(remaining, 0))
            try:
                async with deadline:
                    await self._execute(batch)
            except TimeoutError:
                if not deadline.expired():
                    raise
                await self._finish(batch_id, "expired")
                return
            batch = await self._store.update_batch(
                batch_id, status="finalizing", finalizing_at=int(time.time())
            )
        if batch.status == "finalizing":
            await self._finish(batch_id, "completed")
        elif batch.status == "cancelling":
            await self._finish(batch_id, "cancelled")

    async def _owner(self, batch_id: str) -> Caller:
        name = await self._store.batch_owner(batch_id)
        if name is None:
            raise KeyError(f"batch {batch_id} is not in the store")
        return self._callers(name)

    async def _validate_shared(self, batch_id: str) -> None:
        await self.validate(await self._batch(batch_id))
        if self._worker is not None:
            self._worker.wake()

    async def validate(self, batch: Batch) -> Batch:
        """Check the input file; the batch becomes failed or in_progress (with a shared
        queue, its rows are split out of the file in the same commit)."""
        async with self._store.input_copy(batch.input_file_id) as path:
            # A model the owner may not call is answered like one that does not exist.
            result = await asyncio.to_thread(
                validate_input,
                path,
                batch.endpoint,
                allowed_models(await self._owner(batch.id), self._registry),
                self._settings.max_requests_per_batch,
            )
            counts = batch.request_counts.model_copy(update={"total": result.total})
            now = int(time.time())
            if result.errors:
                return await self._store.update_batch(
                    batch.id,
                    status="failed",
                    failed_at=now,
                    request_counts=counts,
                    errors=BatchErrors(data=result.errors),
                )
            model = result.models[0] if len(result.models) == 1 else None
            changes = dict(
                status="in_progress", in_progress_at=now, request_counts=counts, model=model
            )
            queue = self._store.queue()
            if queue is not None:
                rows = await asyncio.to_thread(list, input_rows(path, batch.endpoint))
                await queue.add_rows(batch.id, rows, **changes)
                return await self._batch(batch.id)
        return await self._store.update_batch(batch.id, **changes)

    async def _execute(self, batch: Batch) -> None:
        done = await self._store.done_custom_ids(batch.id)
        owner = await self._owner(batch.id)
        async with (
            self._store.input_copy(batch.input_file_id) as path,
            asyncio.TaskGroup() as group,
        ):
            reader = read_requests(path, batch.endpoint)
            while (chunk := await asyncio.to_thread(next, reader, None)) is not None:
                for line in chunk:
                    if line.custom_id in done:
                        continue
                    await self._slots.acquire(line.model)
                    group.create_task(self._run_one(batch, line, owner))

    async def _run_one(self, batch: Batch, line: BatchLine, owner: Caller) -> None:
        await self._store.add_result(await self._lines.run(batch.id, line, owner))

    async def _finish(self, batch_id: str, final: str) -> None:
        batch = await self._batch(batch_id)
        extra: list[bytes] = []
        if final == "expired":
            done = await self._store.done_custom_ids(batch_id)
            async with self._store.input_copy(batch.input_file_id) as path:
                extra = await asyncio.to_thread(_expired_lines, path, batch, done)
        await self._store.finish_batch(
            batch_id, extra, status=final, **{f"{final}_at": int(time.time())}
        )
        log.info("batch %s %s", batch_id, final)


def _expired_lines(path: Path, batch: Batch, done: set[str]) -> list[bytes]:
    """Error lines for the requests the completion window left unrun (OpenAI's shape)."""
    lines = []
    for chunk in read_requests(path, batch.endpoint):
        lines += [expired_line(line.custom_id) for line in chunk if line.custom_id not in done]
    return lines
