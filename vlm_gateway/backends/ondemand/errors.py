"""The answers a request gets while its model cannot be loaded for it: each a 503 with a
`Retry-After` and a code that says why."""

from __future__ import annotations

import math

from vlm_gateway.core.errors import ServiceUnavailableError


def _retry_after(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds)))}


def queue_full(model: str, waiting: int, retry_after: float) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"The model '{model}' is loading and {waiting} requests already wait for it (its "
        "load_queue); retry shortly.",
        code="model_loading",
        headers=_retry_after(retry_after),
    )


def load_timed_out(
    model: str, timeout: float, why: str, retry_after: float
) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"The model '{model}' was not loaded within its load_timeout ({timeout:g} s): {why}.",
        code="load_timeout",
        headers=_retry_after(retry_after),
    )


def load_failed(model: str, reason: str, retry_in: float) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"The model '{model}' failed to load: {reason} (tried again on a request after "
        f"{max(1, math.ceil(retry_in))} s).",
        code="load_failed",
        headers=_retry_after(retry_in),
    )


def shutting_down(model: str) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"The gateway is shutting down: the model '{model}' is not loaded any more.",
        code="shutting_down",
    )
