"""Failover before the first byte, the rules: a request whose replica failed before answering
anything is tried once more on another ready replica of the same model (docs/reliability.md).
The loop that follows them is `ModelRequest._failing_over` (server/serving.py).

Retried: what the model's failover rule allows (backends/failover_rule.py: a refused or broken
connection, a timeout waiting for the answer's head, an upstream status in `failover_on`; a
request that got a 500 from two replicas is not tried again), for JSON answers and for streams
that have not been opened yet (`ModelRequest.stream` commits to a 200 only after the opening, so
nothing has reached the client). Never a 4xx, never an error inside a stream. Bounded by the
model's retry budget (backends/retry_budget.py), by the client (one that left is not served
again) and by the request's deadline, the model's `request_timeout` if set: an attempt still
waiting at the deadline is cut (504 `request_timeout`), and none starts after it. The answer
says `x-vlmgw-attempts: 2` when the second attempt was made.

Every outcome is also told to the registry, for outlier ejection (backends/ejection.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import NamedTuple

from fastapi import Response

from vlm_gateway.backends.base import Backend
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.core.errors import GatewayError, UpstreamTimeoutError

ATTEMPTS_HEADER = "x-vlmgw-attempts"
MAX_ATTEMPTS = 2  # the first, and once more on another replica


class Deadline(NamedTuple):
    at: float  # on the event loop's clock
    seconds: float  # the model's request_timeout


class RequestDeadlineError(UpstreamTimeoutError):
    """The model's `request_timeout` ran out: no attempt runs past it, none starts after it."""

    default_code = "request_timeout"


def deadline_for(request_timeout: float | None) -> Deadline | None:
    """When the request must have its answer, on the loop's clock (None: no deadline)."""
    if request_timeout is None:
        return None
    return Deadline(asyncio.get_running_loop().time() + request_timeout, request_timeout)


async def within(deadline: Deadline | None, attempt: Awaitable[Response], model: str) -> Response:
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


def may_retry(
    registry: BackendRegistry,
    model: str,
    tried: list[Backend],
    failures: list[GatewayError],
    deadline: Deadline | None,
) -> bool:
    """Whether the failed attempt is tried once more on another replica (see the module)."""
    return (
        registry.failover_rule.fails_over(model, failures)
        and len(tried) < MAX_ATTEMPTS
        and (deadline is None or asyncio.get_running_loop().time() < deadline.at)
        and registry.has_other_ready(tried[-1], tried)
        and registry.retry_budgets.try_spend(model)  # last: spent only for a retry made
    )
