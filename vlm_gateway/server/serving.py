"""One request for a model, served top to bottom (issue 23).

The chat, completions, Responses and Messages routes parse their body, then hand the rest to a
`ModelRequest`: it carries what every step needs (the HTTP request, the app's state, the
request's metrics tracker, the model) and is the one place that serves it:

1. `admit`: a model the caller's key may not use answers as an unknown one (404), before any
   image work (server/model_access.py);
2. `resolve_images`: every image, video and audio part checked and made a data URL
   (media/resolve.py, images/resolve.py), traced,
   counted, and its time kept for `Server-Timing`;
3. `answer` or `stream`: the loop in `_failing_over` picks a replica (backends/registry.py;
   a model loaded on demand is loaded first, backends/ondemand/),
   traces the call (server/tracing.py), and runs one attempt: `_answer_from` (a JSON answer,
   abandoned if the client leaves first) or `_stream_from` (the stream opened before the route
   commits to a 200, so an early error is a plain JSON error). An attempt that fails before
   answering is tried once more on another replica, within the model's deadline and retry
   budget; the rules are server/failover.py's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response

from vlm_gateway.backends.base import Backend
from vlm_gateway.core.errors import GatewayError
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.core.request_context import current_affinity_key
from vlm_gateway.media.parts import media_parts
from vlm_gateway.server.door.keys import caller_of
from vlm_gateway.server.door.request_metrics import request_tracker
from vlm_gateway.server.failover import ATTEMPTS_HEADER, deadline_for, may_retry, within
from vlm_gateway.server.model_access import require_model
from vlm_gateway.server.route_helpers import (
    CLIENT_CLOSED_REQUEST,
    RelayedStream,
    StreamRelay,
    client_gone,
    json_response,
)
from vlm_gateway.server.state import gateway_state
from vlm_gateway.server.tracing import BackendCall

log = logging.getLogger(__name__)


class _ClientLeft(GatewayError):
    status_code = CLIENT_CLOSED_REQUEST  # nobody reads it: the access line and metrics do


JsonCall = Callable[[Backend], Coroutine[Any, Any, dict[str, Any]]]
StreamOpening = Callable[[Backend], Awaitable[AsyncIterator[bytes]]]
_Attempt = Callable[[Backend, BackendCall], Awaitable[Response]]


class ModelRequest:
    def __init__(self, request: Request, model: str) -> None:
        self.request = request
        self.model = model
        self.state = gateway_state(request)
        self.tracker = request_tracker(request.scope)

    def admit(self) -> None:
        """The caller's key may use the model (else 404 `model_not_found`); the model named on
        the request's span."""
        require_model(caller_of(self.request.scope), self.state.registry, self.model)
        self.state.tracer.annotate_request(self.model)

    async def resolve_images(self, chat: ChatCompletionRequest) -> None:
        """Resolve the request's images (traced), then count them for its usage: metrics, log
        and Server-Timing."""
        started = time.perf_counter()
        with self.state.tracer.resolving_images(chat):
            count = await self.state.resolver.resolve(chat)
        if self.tracker is None:
            return
        if count or media_parts(chat):  # Server-Timing's `images`: video and audio too
            self.tracker.images_s += time.perf_counter() - started
        if count:
            self.tracker.images(count)

    async def answer(self, call: JsonCall) -> Response:
        """The JSON answer of `call` on a replica."""
        return await self._failing_over(
            lambda backend, traced: self._answer_from(backend, traced.call(call(backend)))
        )

    async def stream(self, opening: StreamOpening) -> Response:
        """The event stream `opening` opens on a replica."""
        return await self._failing_over(
            lambda backend, traced: self._stream_from(backend, traced.stream(opening(backend)))
        )

    async def _failing_over(self, attempt: _Attempt) -> Response:
        """Attempts on picked replicas until one answers or the rules say stop; each outcome is
        told to the registry (outlier ejection)."""
        registry, metrics, model = self.state.registry, self.state.metrics, self.model
        registry.retry_budgets.requested(model)
        key = current_affinity_key()  # its images' digest (images/resolve.py), for `affinity`
        # A model loaded on demand is loaded first; its deadline runs from its first attempt.
        backend = await self._first_pick(key)
        deadline = deadline_for(self.state.settings.request_timeout(model))
        tried: list[Backend] = []
        failures: list[GatewayError] = []  # of this request's attempts, for the failover rule
        while True:
            tried.append(backend)
            try:
                traced = self.state.tracer.backend_call(backend, registry)
                response = await within(deadline, attempt(backend, traced), model)
            except GatewayError as exc:
                registry.record(backend, exc)
                failures.append(exc)
                if not may_retry(registry, model, tried, failures, deadline):
                    if len(tried) > 1:
                        metrics.failover(model, served=False)
                        exc.headers[ATTEMPTS_HEADER] = str(len(tried))
                    raise
                log.warning(
                    "model %s: replica %d failed before answering (%s); trying another replica",
                    model,
                    registry.replica_index(backend),
                    exc.message,
                )
                backend = registry.pick(model, avoid=tried, key=key)
                continue
            if response.status_code < 500:  # a 499 (the client left) says nothing of the replica
                registry.succeeded(backend)
            if len(tried) > 1:
                response.headers[ATTEMPTS_HEADER] = str(len(tried))
                metrics.failover(model, served=True)
            return response

    async def _first_pick(self, key: int | None) -> Backend:
        """The first replica. A model loaded on demand is loaded first (backends/ondemand/);
        a client that leaves meanwhile leaves the load's queue, and its request ends (499)."""
        loader = self.state.loader
        if not loader.must_load(self.model):
            return loader.pick_now(self.model, key)
        task = asyncio.current_task()
        assert task is not None  # a request is always served in a task
        client, stop_watching = client_gone(self.request)
        unhook = client.when_gone(task.cancel)
        try:
            return await loader.pick(self.model, key=key)
        except asyncio.CancelledError:
            if not client.gone:
                raise
            task.uncancel()  # our own cancel: the request ends here
            log.info("client left while model %s was loading: request abandoned", self.model)
            raise _ClientLeft("The client left before the model was loaded.") from None
        finally:
            unhook()
            stop_watching()

    def _served_by(self, backend: Backend) -> None:
        """Label the request's metrics with the replica that serves it."""
        if self.tracker is not None:
            replica = self.state.registry.replica_index(backend)
            self.tracker.served_by(backend.name, str(replica))

    async def _answer_from(
        self, backend: Backend, call: Coroutine[Any, Any, dict[str, Any]]
    ) -> Response:
        """Run a non-streaming call, abandoning it if the client disconnects first, so an
        upstream request (or a generation) nobody waits for any more is stopped, not finished:
        the request's own task is cancelled when its client goes, and answers 499."""
        self._served_by(backend)
        task = asyncio.current_task()
        assert task is not None  # a request is always served in a task
        client, stop_watching = client_gone(self.request)
        unhook = client.when_gone(task.cancel)
        backend.in_flight += 1
        started = time.perf_counter()
        try:
            result = await call
        except asyncio.CancelledError:
            if not client.gone:
                raise
            task.uncancel()  # our own cancel: the request ends here, normally
            log.info("client left before model %s answered: request abandoned", backend.name)
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        finally:
            unhook()
            stop_watching()
            backend.in_flight -= 1
            self._upstream_time(started)
        if self.tracker is not None:
            self.tracker.usage(result.get("usage"))
        return json_response(result)

    async def _stream_from(
        self, backend: Backend, opening: Awaitable[AsyncIterator[bytes]]
    ) -> Response:
        """Open the backend's stream first: an error before the first event is a plain JSON
        error with the right status; only then do we commit to a 200 event stream."""
        self._served_by(backend)
        backend.in_flight += 1
        started = time.perf_counter()
        try:
            events = await opening
        except BaseException:
            backend.in_flight -= 1
            raise
        finally:
            self._upstream_time(started)
        return RelayedStream(StreamRelay(backend, events, self.tracker))

    def _upstream_time(self, started: float) -> None:
        if self.tracker is not None:
            self.tracker.backend_s += time.perf_counter() - started
