"""One on-demand model as the manager sees it: its replicas, its settings, where it is in
loading, who waits for it, when it was last used and how its last load went."""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass

from vlm_gateway.backends.base import Backend, State
from vlm_gateway.config.settings import ModelEntry
from vlm_gateway.core.errors import GatewayError

log = logging.getLogger(__name__)

# A load that failed is tried again on a later request after this, doubled per failure in a row.
RETRY_BACKOFF_S = 2.0
RETRY_BACKOFF_MAX_S = 120.0
# Said in Retry-After before a model's first load has been timed.
_FIRST_LOAD_GUESS_S = 10.0


class Phase(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"  # room made; its replicas are loading
    LOADED = "loaded"
    UNLOADING = "unloading"


@dataclass(frozen=True)
class LoadPolicy:
    """A model's `load_timeout`, `load_queue` and `idle_unload` (None: never)."""

    load_timeout: float = 300.0
    load_queue: int = 64
    idle_unload: float | None = None
    retry_backoff: float = RETRY_BACKOFF_S

    @classmethod
    def of(cls, entry: ModelEntry) -> LoadPolicy:
        idle = entry.idle_unload
        return cls(entry.load_timeout, entry.load_queue, None if idle == "never" else idle)


class ModelSlot:
    def __init__(self, name: str, replicas: list[Backend], policy: LoadPolicy) -> None:
        self.name = name
        self.replicas = replicas
        self.policy = policy
        self.phase = Phase.UNLOADED
        self.loading: asyncio.Task[None] | None = None
        self.unloading: asyncio.Task[None] | None = None
        self.waiting = 0  # requests waiting for this model's load
        self.used_at = 0.0  # loop time of its last use: least recently used goes first
        self.failures = 0  # failed loads in a row
        self.retry_at = 0.0  # loop time before which a failed load is not tried again
        self.last_error: str | None = None
        self.last_load_s: float | None = None

    def busy(self) -> bool:
        """Requests in flight at one of its replicas, or waiting for it: never unloaded."""
        return self.waiting > 0 or any(backend.in_flight for backend in self.replicas)

    def occupies(self) -> bool:
        """Whether it holds (or is taking) its memory."""
        return self.phase is not Phase.UNLOADED

    def serves(self) -> bool:
        """Loaded, and not given up on by its replicas (a loaded vLLM that exhausted its
        restarts is loaded again on the next request)."""
        given_up = (State.FAILED, State.STOPPED, State.UNLOADED)
        return self.phase is Phase.LOADED and any(
            backend.status.state not in given_up for backend in self.replicas
        )

    def load_guess(self) -> float:
        """Seconds a load of this model is expected to take (for Retry-After)."""
        return min(self.last_load_s or _FIRST_LOAD_GUESS_S, self.policy.load_timeout)

    def failed(self, reason: str, now: float) -> None:
        self.failures += 1
        self.last_error = reason
        backoff = self.policy.retry_backoff * 2.0 ** (self.failures - 1)
        self.retry_at = now + min(backoff, RETRY_BACKOFF_MAX_S)

    def loaded(self, seconds: float) -> None:
        self.phase = Phase.LOADED
        self.failures = 0
        self.last_error = None
        self.last_load_s = seconds

    async def load_replicas(self) -> None:
        """Every replica loaded side by side; loaded when one is (the others' failures are
        logged and shown in their state), failed when none is."""
        outcomes = await asyncio.gather(
            *(backend.load() for backend in self.replicas), return_exceptions=True
        )
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        for failure in failures:
            if isinstance(failure, asyncio.CancelledError):
                raise failure
        if len(failures) == len(outcomes):
            raise failures[0]
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, BaseException):
                log.error(
                    "model %s: replica %d did not load: %s", self.name, index, reason_of(outcome)
                )

    async def unload_replicas(self) -> None:
        outcomes = await asyncio.gather(
            *(backend.unload() for backend in self.replicas), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                log.error("model %s: unload failed: %s", self.name, reason_of(outcome))

    def state_word(self) -> str:
        """loaded, loading, sleeping, unloading or unloaded (/v1/models)."""
        if self.phase is Phase.UNLOADED and any(
            backend.status.state is State.SLEEPING for backend in self.replicas
        ):
            return "sleeping"  # unloaded to host memory (vLLM sleep mode)
        return self.phase.value


def reason_of(exc: BaseException) -> str:
    """A failure in words: a GatewayError's own message, else the exception's."""
    if isinstance(exc, GatewayError):
        return exc.message
    return str(exc) or type(exc).__name__
