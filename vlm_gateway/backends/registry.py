"""Model name -> replicas, and the choice of replica for each request."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Literal

from vlm_gateway.backends.affinity import HashRing
from vlm_gateway.backends.base import Backend, State
from vlm_gateway.backends.ejection import OutlierEjector
from vlm_gateway.backends.failover_rule import FailoverRule
from vlm_gateway.backends.retry_budget import RetryBudgets
from vlm_gateway.core.errors import GatewayError, ModelNotFoundError, ServiceUnavailableError

DEFAULT_EJECT_AFTER = 5  # ModelEntry's defaults, for registries built without settings
DEFAULT_RETRY_BUDGET = 0.2
ReadyPolicy = Literal["all", "any"]  # bare GET /ready: every model ready, or at least one
Routing = Literal["least_busy", "affinity"]  # a model's `routing` setting

# A model's state is its most hopeful replica's: one ready replica serves, a starting one may.
_MOST_HOPEFUL_FIRST = (
    State.READY,
    State.LOADING,
    State.STARTING,
    State.SLEEPING,
    State.UNLOADED,
    State.UNAVAILABLE,
    State.FAILED,
    State.STOPPED,
)
# States in which a model serves a request: at once, or once loaded on demand for it (/ready).
SERVES_ON_REQUEST = frozenset({State.READY, State.LOADING, State.SLEEPING, State.UNLOADED})


class BackendRegistry:
    def __init__(
        self,
        backends: Iterable[Backend],
        ejector: OutlierEjector | None = None,
        retry_budgets: RetryBudgets | None = None,
        routing: Callable[[str], Routing] | None = None,
        failover_on: Callable[[str], Collection[int]] | None = None,
    ) -> None:
        self._by_name: dict[str, list[Backend]] = {}
        for backend in backends:
            self._by_name.setdefault(backend.name, []).append(backend)
        # Outlier ejection and failover budgets (docs/reliability.md); defaults for registries
        # built without settings (tests, tools).
        self.ejector = ejector or OutlierEjector(lambda _name: DEFAULT_EJECT_AFTER)
        self.retry_budgets = retry_budgets or RetryBudgets(lambda _name: DEFAULT_RETRY_BUDGET)
        self.failover_rule = FailoverRule(failover_on)  # which failures go to another replica
        # Per model: how many picks broke a tie, so ties rotate instead of always going to
        # the first listed replica (a sequential client would never reach the others).
        self._turns: dict[str, int] = {}
        # Model name -> its `routing` setting; the rings of `affinity` models, built on first use.
        self._routing = routing or (lambda _name: "least_busy")
        self._rings: dict[str, HashRing[int]] = {}

    def names(self) -> list[str]:
        return list(self._by_name)

    def backends(self) -> list[Backend]:
        return [b for replicas in self._by_name.values() for b in replicas]

    def replicas(self, name: str) -> list[Backend]:
        return self._by_name.get(name, [])

    def replica_index(self, backend: Backend) -> int:
        """The backend's place among its model's replicas (the `replica` label of metrics)."""
        for index, candidate in enumerate(self._by_name.get(backend.name, [])):
            if candidate is backend:
                return index
        raise ValueError(f"{backend.name}: this backend is not in the registry")

    def pick(self, name: str, avoid: Sequence[Backend] = (), key: int | None = None) -> Backend:
        """A ready replica with the fewest requests in flight, ties taken in turn; 404 or 503
        at once otherwise. Ejected replicas (backends/ejection.py) and those in `avoid` (tried
        already) are passed over while another ready one is left. For a model routed by
        `affinity`, a request with a `key` (its images' digest) goes to the key's replica on
        the ring unless that one is out or above its load bound (backends/affinity.py)."""
        replicas = self._by_name.get(name)
        if replicas is None:
            raise ModelNotFoundError(name, self.names())
        ready = [b for b in replicas if b.status.ready and all(b is not a for a in avoid)]
        serving = [b for b in ready if not self.ejector.ejected(b)] or ready
        if not serving:
            raise ServiceUnavailableError(
                f"The model '{name}' has no ready backend right now ({_states(replicas)}). "
                "Retry shortly; GET /ready shows every model's state."
            )
        if key is not None and len(serving) > 1 and self._routing(name) == "affinity":
            return self._by_affinity(name, replicas, serving, key)
        fewest = min(b.in_flight for b in serving)
        tied = [b for b in serving if b.in_flight == fewest]
        if len(tied) == 1:
            return tied[0]
        turn = self._turns.get(name, 0)
        self._turns[name] = turn + 1
        return tied[turn % len(tied)]

    def _by_affinity(
        self, name: str, replicas: list[Backend], serving: list[Backend], key: int
    ) -> Backend:
        ring = self._rings.get(name)
        if ring is None:  # over every configured replica: one that is out keeps its points
            ring = self._rings[name] = HashRing(list(range(len(replicas))))

        chosen = ring.choose(
            key,
            load=lambda index: replicas[index].in_flight,
            eligible=lambda index: any(replicas[index] is b for b in serving),
        )
        return serving[0] if chosen is None else replicas[chosen]

    def has_other_ready(self, backend: Backend, tried: Sequence[Backend]) -> bool:
        """Whether a ready replica of the backend's model is left besides those tried."""
        return any(
            b.status.ready and all(b is not t for t in tried)
            for b in self._by_name.get(backend.name, [])
        )

    def record(self, backend: Backend, error: GatewayError | None = None) -> None:
        """The outcome of one request to `backend`: an error of 500 or more counts against it
        (outlier ejection), anything else is an answer."""
        if error is not None and error.status_code >= 500:
            self.failed(backend)
        else:
            self.succeeded(backend)

    def succeeded(self, backend: Backend) -> None:
        """The replica answered (any status but a failure of its own): its record clears."""
        self.ejector.succeeded(backend, self.replica_index(backend))

    def failed(self, backend: Backend) -> None:
        """The replica failed a request (5xx, unreachable, timeout): may eject it."""
        replicas = self._by_name.get(backend.name, [])
        self.ejector.failed(backend, self.replica_index(backend), replicas)

    def describe(self, backend: Backend) -> dict[str, Any]:
        """The replica's card (/ready, /v1/models): its own report, and its ejection if any."""
        card = backend.describe()
        ejection = self.ejector.describe(backend)
        if "ejected_for_s" in ejection and card.get("state") == State.READY.value:
            card["state"] = "ejected"
            card["reason"] = (
                f"ejected after repeated failures; back on probation in "
                f"{ejection['ejected_for_s']:g} s"
            )
        return card | ejection

    def readiness(self, policy: ReadyPolicy = "all") -> tuple[bool, dict[str, Any]]:
        """Whether the gateway is ready under `policy`, and every model's report."""
        report = {name: self._model_report(replicas) for name, replicas in self._by_name.items()}
        verdicts = [entry["ready"] for entry in report.values()]
        return (all(verdicts) if policy == "all" else any(verdicts)), report

    def model_readiness(self, name: str) -> dict[str, Any]:
        """One model's report (`ready`, `state`, `replicas`); 404 for an unknown model."""
        replicas = self._by_name.get(name)
        if replicas is None:
            raise ModelNotFoundError(name, self.names())
        return self._model_report(replicas)

    def _model_report(self, replicas: list[Backend]) -> dict[str, Any]:
        states = {backend.status.state for backend in replicas}
        state = next(s for s in _MOST_HOPEFUL_FIRST if s in states)
        return {
            "ready": state in SERVES_ON_REQUEST,
            "state": state.value,
            "replicas": [self.describe(backend) for backend in replicas],
        }


def _states(replicas: list[Backend]) -> str:
    parts = []
    for backend in replicas:
        status = backend.status
        parts.append(status.state.value + (f": {status.reason}" if status.reason else ""))
    return "; ".join(parts)
