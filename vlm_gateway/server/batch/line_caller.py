"""Running one batch line through the same BackendRegistry as live traffic, and the per-model
slots that keep batch requests out of live requests' way. Used by the runner alike for a
batch read from its input file (SQLite) and for rows leased from a shared queue (PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from vlm_gateway.backends.base import State
from vlm_gateway.backends.ondemand.manager import OnDemandLoader
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.core.errors import GatewayError, ServiceUnavailableError
from vlm_gateway.core.metrics import Metrics
from vlm_gateway.core.protocol import ChatCompletionRequest, CompletionRequest
from vlm_gateway.core.request_context import (
    RequestContext,
    accepted_request_id,
    bound_request,
    current_affinity_key,
    new_request_id,
)
from vlm_gateway.server.batch.store_base import ResultRow, new_id
from vlm_gateway.server.batch.validation import BatchLine
from vlm_gateway.server.door.keys import Caller
from vlm_gateway.server.model_access import require_model

log = logging.getLogger(__name__)

# What the live chat route does to a request before routing it (image resolution).
Prepare = Callable[[ChatCompletionRequest], Awaitable[object]]

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


class LineCaller:
    """Runs one line (its slot already acquired) and returns its result row."""

    def __init__(
        self,
        registry: BackendRegistry,
        slots: ModelSlots,
        prepare_chat: Prepare | None,
        metrics: Metrics | None,
        loader: OnDemandLoader | None = None,
    ) -> None:
        self._registry = registry
        self._loader = loader or OnDemandLoader(registry)
        self.slots = slots
        self._prepare_chat = prepare_chat
        self._metrics = metrics

    async def run(self, batch_id: str, line: BatchLine, owner: Caller) -> ResultRow:
        """Releases the line's slot once the upstream call is over."""
        # Each line is a request of its own: its id goes upstream, on its log lines and into
        # its output row (response.request_id). Retries of the line keep it.
        context = RequestContext(_line_request_id(batch_id, line.custom_id), model=line.model)
        try:
            with bound_request(context):
                status, body = await self._call(line, owner)
        finally:
            self.slots.release(line.model)
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
        return ResultRow(batch_id, line.custom_id, ok, line.model, orjson.dumps(output))

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
        # A model loaded on demand is loaded first (within its budget: one in use by live
        # traffic is never unloaded for a batch).
        backend = await self._loader.pick(line.model, key=current_affinity_key())
        backend.in_flight += 1  # so the registry spreads live requests around ours
        self.slots.calling[line.model] += 1
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
            self.slots.calling[line.model] -= 1
        if self._metrics is not None:
            replica = str(self._registry.replica_index(backend))
            self._metrics.usage(line.model, replica, response.get("usage"), key=owner.name)
        return response

    def _model_failed(self, model: str) -> bool:
        replicas = self._registry.replicas(model)
        return all(b.status.state in (State.FAILED, State.STOPPED) for b in replicas)


def _line_request_id(batch_id: str, custom_id: str) -> str:
    """`<batch id>-<custom_id>` when that is a usable request id (the same on a resumed run),
    else a new one: custom_id is the client's free text."""
    return accepted_request_id(f"{batch_id}-{custom_id}") or new_request_id()


def expired_line(custom_id: str) -> bytes:
    """The error line for a request the completion window left unrun (OpenAI's shape)."""
    error = {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    }
    return orjson.dumps(
        {"id": new_id("batch_req_"), "custom_id": custom_id, "response": None, "error": error}
    )
