"""Failover before the first byte: a request whose replica failed before answering anything is
tried once more on another ready replica of the same model (docs/reliability.md).

Retried: what the model's failover rule allows (backends/failover_rule.py: a refused or broken
connection, a timeout waiting for the answer's head, an upstream status in `failover_on`; a
request that got a 500 from two replicas is not tried again), for JSON answers and for streams
that have not been opened yet (`stream_tracked` commits to a 200 only after the opening, so
nothing has reached the client). Never a 4xx, never an error inside a stream. Bounded by the
model's retry budget (backends/retry_budget.py), by the client (one that left is not served
again) and by the request's deadline, the model's `request_timeout` if set: an attempt still
waiting at the deadline is cut (504 `request_timeout`), and none starts after it. The answer
says `x-vlmgw-attempts: 2` when the second attempt was made.

Every outcome is also told to the registry, for outlier ejection (backends/ejection.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, NamedTuple

from fastapi import Request, Response

from vlm_gateway.backends.base import Backend
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.core.errors import GatewayError, UpstreamTimeoutError
from vlm_gateway.core.request_context import current_affinity_key
from vlm_gateway.server.route_helpers import call_tracked, stream_tracked
from vlm_gateway.server.state import gateway_state
from vlm_gateway.server.tracing import BackendCall

log = logging.getLogger(__name__)

ATTEMPTS_HEADER = "x-vlmgw-attempts"
MAX_ATTEMPTS = 2  # the first, and once more on another replica

# The call of one attempt on the replica given, through the tracer's wrapper for it.
JsonAttempt = Callable[[Backend, BackendCall], Coroutine[Any, Any, dict[str, Any]]]
StreamAttempt = Callable[[Backend, BackendCall], Awaitable[AsyncIterator[bytes]]]
_Served = Callable[[Backend, BackendCall], Awaitable[Response]]


class _Deadline(NamedTuple):
    at: float  # on the event loop's clock
    seconds: float  # the model's request_timeout


async def call_with_failover(request: Request, model: str, attempt: JsonAttempt) -> Response:
    """`call_tracked` of `attempt` on a picked replica, failing over once (see the module)."""

    async def served(backend: Backend, traced: BackendCall) -> Response:
        return await call_tracked(request, backend, attempt(backend, traced))

    return await _with_failover(request, model, served)


async def stream_with_failover(request: Request, model: str, attempt: StreamAttempt) -> Response:
    """`stream_tracked` of `attempt`: a stream whose opening failed is opened elsewhere."""

    async def served(backend: Backend, traced: BackendCall) -> Response:
        return await stream_tracked(request, backend, attempt(backend, traced))

    return await _with_failover(request, model, served)


async def _with_failover(request: Request, model: str, served: _Served) -> Response:
    state = gateway_state(request)
    registry = state.registry
    registry.retry_budgets.requested(model)
    tried: list[Backend] = []
    failures: list[GatewayError] = []  # of this request's attempts, for the failover rule
    deadline = _deadline(state.settings.request_timeout(model))
    key = current_affinity_key()  # its images' digest (images/resolve.py), for `affinity`
    while True:
        backend = registry.pick(model, avoid=tried, key=key)
        tried.append(backend)
        try:
            attempt = served(backend, state.tracer.backend_call(backend, registry))
            response = await _within(deadline, attempt, model)
        except GatewayError as exc:
            registry.record(backend, exc)
            failures.append(exc)
            if not _may_retry(registry, model, tried, failures, deadline):
                if len(tried) > 1:
                    state.metrics.failover(model, served=False)
                    exc.headers[ATTEMPTS_HEADER] = str(len(tried))
                raise
            log.warning(
                "model %s: replica %d failed before answering (%s); trying another replica",
                model,
                registry.replica_index(backend),
                exc.message,
            )
            continue
        if response.status_code < 500:  # a 499 (the client left) says nothing of the replica
            registry.succeeded(backend)
        if len(tried) > 1:
            response.headers[ATTEMPTS_HEADER] = str(len(tried))
            state.metrics.failover(model, served=True)
        return response


class RequestDeadlineError(UpstreamTimeoutError):
    """The model's `request_timeout` ran out: no attempt runs past it, none starts after it."""

    default_code = "request_timeout"


def _deadline(request_timeout: float | None) -> _Deadline | None:
    """When the request must have its answer, on the loop's clock (None: no deadline)."""
    if request_timeout is None:
        return None
    return _Deadline(asyncio.get_running_loop().time() + request_timeout, request_timeout)


async def _within(deadline: _Deadline | None, attempt: Awaitable[Response], model: str) -> Response:
    """The attempt, cut (and abandoned upstream) when the request's deadline comes."""
    if deadline is None:
        return await attempt
    scope = asyncio.timeout_at(deadline.at)
    try:
        async with scope:
            return await attempt
    except TimeoutError:
        if not scope.expired():
            raise
        raise RequestDeadlineError(
            f"Model {model} did not answer within its request_timeout ({deadline.seconds:g} s)."
        ) from None


def _may_retry(
    registry: BackendRegistry,
    model: str,
    tried: list[Backend],
    failures: list[GatewayError],
    deadline: _Deadline | None,
) -> bool:
    return (
        registry.failover_rule.fails_over(model, failures)
        and len(tried) < MAX_ATTEMPTS
        and (deadline is None or asyncio.get_running_loop().time() < deadline.at)
        and registry.has_other_ready(tried[-1], tried)
        and registry.retry_budgets.try_spend(model)  # last: spent only for a retry made
    )
