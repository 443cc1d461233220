"""Runs batches in the background through the same BackendRegistry as live traffic.

Per model, batch requests only fill what live requests leave of `concurrency_per_model`, so a
vLLM backend's own batch stays full while a live request never queues behind a batch. Each
result is committed as it completes (store.add_result); on start, unfinished batches resume
and skip every custom_id already stored, so none is ever written twice.

A batch runs as its owner (the key that created it): its lines may name only models the owner
may call, checked when the batch is validated and again for each line it runs (the keys may
have changed across a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson

from vlm_gateway.backends.base import State
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.settings import BatchSettings
from vlm_gateway.core.errors import GatewayError, ServiceUnavailableError
from vlm_gateway.core.metrics import Metrics
from vlm_gateway.core.protocol import ChatCompletionRequest, CompletionRequest
from vlm_gateway.core.request_context import (
    RequestContext,
    accepted_request_id,
    bound_request,
    new_request_id,
)
from vlm_gateway.server.batch.protocol import Batch, BatchErrors
from vlm_gateway.server.batch.store import ResultRow, Store, new_id
from vlm_gateway.server.batch.validation import BatchLine, read_requests, validate_input
from vlm_gateway.server.door.keys import Caller
from vlm_gateway.server.model_access import allowed_models, require_model

log = logging.getLogger(__name__)

# What the live chat route does to a request before routing it (image resolution).
Prepare = Callable[[ChatCompletionRequest], Awaitable[object]]
# Who an owner's name stands for now (KeyRing.caller_named).
Callers = Callable[[str], Caller]

_LIVE_POLL_S = 0.05  # live requests don't notify us when they end: look again this often
_NOT_READY_WAIT_S = 1.0
_UPSTREAM_RETRIES = 2
_RETRY_STATUSES = (502, 503, 504)


class ModelSlots:
    """How many batch requests may run per model now: what live requests leave free."""

    def __init__(self, registry: BackendRegistry, limit: int) -> None:
        self._registry = registry
        self._limit = limit
        self.active: Counter[str] = Counter()  # slots held by batch requests
        self.calling: Counter[str] = Counter()  # of those, the ones counted in in_flight now
        self._released = asyncio.Event()

    def _free(self, model: str) -> bool:
        in_flight = sum(b.in_flight for b in self._registry.replicas(model))
        live = in_flight - self.calling[model]
        return self.active[model] + live < self._limit

    async def acquire(self, model: str) -> None:
        while not self._free(model):
            self._released.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), _LIVE_POLL_S)
        self.active[model] += 1

    def release(self, model: str) -> None:
        self.active[model] -= 1
        self._released.set()


class BatchRunner:
    def __init__(
        self,
        store: Store,
        registry: BackendRegistry,
        settings: BatchSettings,
        prepare_chat: Prepare | None = None,
        *,
        metrics: Metrics | None = None,
        callers: Callers = Caller,  # by default every owner may call every model
    ) -> None:
        self._store = store
        self._callers = callers
        self._metrics = metrics
        self._prepare_chat = prepare_chat
        self._registry = registry
        self._settings = settings
        self._slots = ModelSlots(registry, settings.concurrency_per_model)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        """Resume every batch a previous run (or crash) left unfinished."""
        for batch_id in await self._store.active_batch_ids():
            log.info("resuming batch %s", batch_id)
            self.submit(batch_id)

    async def stop(self) -> None:
        """Stop working; unfinished batches stay as they are and resume on the next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def submit(self, batch_id: str) -> None:
        self._track(batch_id, self._drive(batch_id))

    async def cancel(self, batch_id: str) -> Batch:
        """Mark the batch cancelling and return; in-flight requests are stopped and what is
        done is written out in the background."""
        batch = await self._store.update_batch(
            batch_id, status="cancelling", cancelling_at=int(time.time())
        )
        running = self._tasks.get(batch_id)
        self._track(batch_id, self._cancel_then_finish(batch_id, running))
        return batch

    # -- one batch ---------------------------------------------------------------------------

    def _track(self, batch_id: str, work: Coroutine[Any, Any, None]) -> None:
        # A fresh context: the batch outlives the request that submitted it, and its lines
        # bind their own request ids (_run_one).
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
            batch = await self._validate(batch)
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

    async def _validate(self, batch: Batch) -> Batch:
        path = self._store.file_path(batch.input_file_id)
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
        return await self._store.update_batch(
            batch.id, status="in_progress", in_progress_at=now, request_counts=counts, model=model
        )

    async def _execute(self, batch: Batch) -> None:
        done = await self._store.done_custom_ids(batch.id)
        owner = await self._owner(batch.id)
        reader = read_requests(self._store.file_path(batch.input_file_id), batch.endpoint)
        async with asyncio.TaskGroup() as group:
            while (chunk := await asyncio.to_thread(next, reader, None)) is not None:
                for line in chunk:
                    if line.custom_id in done:
                        continue
                    await self._slots.acquire(line.model)
                    group.create_task(self._run_one(batch, line, owner))

    async def _run_one(self, batch: Batch, line: BatchLine, owner: Caller) -> None:
        # Each line is a request of its own: its id goes upstream, on its log lines and into
        # its output row (response.request_id). Retries of the line keep it.
        context = RequestContext(_line_request_id(batch.id, line.custom_id), model=line.model)
        try:
            with bound_request(context):
                status, body = await self._call(line, owner)
        finally:
            self._slots.release(line.model)
        ok = status == 200
        if self._metrics is not None:
            self._metrics.batch_request(line.model, ok)
        error = (
            None
            if ok
            else {
                "code": body["error"].get("code") or body["error"]["type"],
                "message": body["error"]["message"],
            }
        )
        output = {
            "id": new_id("batch_req_"),
            "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": context.request_id, "body": body},
            "error": error,
        }
        await self._store.add_result(
            ResultRow(batch.id, line.custom_id, ok, line.model, orjson.dumps(output))
        )

    async def _call(self, line: BatchLine, owner: Caller) -> tuple[int, dict[str, Any]]:
        """(status, body) of one request; transient upstream trouble is retried, a model that
        is still starting is waited for (the completion window bounds the wait)."""
        retries = 0
        while True:
            try:
                return 200, await self._call_once(line, owner)
            except ServiceUnavailableError as exc:
                if self._model_failed(line.model):
                    return exc.status_code, exc.envelope()
                await asyncio.sleep(_NOT_READY_WAIT_S)
            except GatewayError as exc:
                if exc.status_code not in _RETRY_STATUSES or retries >= _UPSTREAM_RETRIES:
                    return exc.status_code, exc.envelope()
                retries += 1
                await asyncio.sleep(0.5 * retries)
            except Exception:
                log.exception("batch request %s failed inside the gateway", line.custom_id)
                return 500, GatewayError("The gateway failed to run this request.").envelope()

    async def _call_once(self, line: BatchLine, owner: Caller) -> dict[str, Any]:
        # The request's type is the batch endpoint's body model (validation parses each line
        # with it), so dispatching on the type is dispatching on the endpoint.
        require_model(owner, self._registry, line.model)  # before any image is fetched
        request = line.request
        if isinstance(request, ChatCompletionRequest) and self._prepare_chat is not None:
            await self._prepare_chat(request)
        backend = self._registry.pick(line.model)
        backend.in_flight += 1  # so the registry spreads live requests around ours
        self._slots.calling[line.model] += 1
        try:
            if isinstance(request, CompletionRequest):
                response = await backend.completions(request)
            else:
                response = await backend.chat(request)
        except GatewayError as exc:
            # Counts toward outlier ejection; _call's retry picks again, so another replica
            # serves it, and the request stays one result line.
            self._registry.record(backend, exc)
            raise
        else:
            self._registry.record(backend)
        finally:
            backend.in_flight -= 1
            self._slots.calling[line.model] -= 1
        if self._metrics is not None:
            replica = str(self._registry.replica_index(backend))
            self._metrics.usage(line.model, replica, response.get("usage"), key=owner.name)
        return response

    def _model_failed(self, model: str) -> bool:
        replicas = self._registry.replicas(model)
        return all(b.status.state in (State.FAILED, State.STOPPED) for b in replicas)

    async def _finish(self, batch_id: str, final: str) -> None:
        batch = await self._batch(batch_id)
        extra: list[bytes] = []
        if final == "expired":
            extra = await asyncio.to_thread(
                self._expired_lines, batch, await self._store.done_custom_ids(batch_id)
            )
        await self._store.finish_batch(
            batch_id, extra, status=final, **{f"{final}_at": int(time.time())}
        )
        log.info("batch %s %s", batch_id, final)

    def _expired_lines(self, batch: Batch, done: set[str]) -> list[bytes]:
        """Error lines for the requests the completion window left unrun (OpenAI's shape)."""
        lines = []
        for chunk in read_requests(self._store.file_path(batch.input_file_id), batch.endpoint):
            lines += [_expired_line(line.custom_id) for line in chunk if line.custom_id not in done]
        return lines


def _line_request_id(batch_id: str, custom_id: str) -> str:
    """`<batch id>-<custom_id>` when that is a usable request id (the same on a resumed run),
    else a new one: custom_id is the client's free text."""
    return accepted_request_id(f"{batch_id}-{custom_id}") or new_request_id()


def _expired_line(custom_id: str) -> bytes:
    error = {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    }
    return orjson.dumps(
        {"id": new_id("batch_req_"), "custom_id": custom_id, "response": None, "error": error}
    )
