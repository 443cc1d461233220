"""Model name -> replicas, and the choice of replica for each request."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from vlm_gateway.backends.base import Backend, State
from vlm_gateway.core.errors import ModelNotFoundError, ServiceUnavailableError

ReadyPolicy = Literal["all", "any"]  # bare GET /ready: every model ready, or at least one

# A model's state is its most hopeful replica's: one ready replica serves, a starting one may.
_MOST_HOPEFUL_FIRST = (State.READY, State.STARTING, State.UNAVAILABLE, State.FAILED, State.STOPPED)


class BackendRegistry:
    def __init__(self, backends: Iterable[Backend]) -> None:
        self._by_name: dict[str, list[Backend]] = {}
        for backend in backends:
            self._by_name.setdefault(backend.name, []).append(backend)

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

    def pick(self, name: str) -> Backend:
        """The ready replica with the fewest requests in flight; 404 or 503 at once otherwise."""
        replicas = self._by_name.get(name)
        if replicas is None:
            raise ModelNotFoundError(name, self.names())
        best: Backend | None = None
        for backend in replicas:
            if backend.status.ready and (best is None or backend.in_flight < best.in_flight):
                best = backend
        if best is None:
            raise ServiceUnavailableError(
                f"The model '{name}' has no ready backend right now ({_states(replicas)}). "
                "Retry shortly; GET /ready shows every model's state."
            )
        return best

    def readiness(self, policy: ReadyPolicy = "all") -> tuple[bool, dict[str, Any]]:
        """Whether the gateway is ready under `policy`, and every model's report."""
        report = {name: _model_report(replicas) for name, replicas in self._by_name.items()}
        verdicts = [entry["ready"] for entry in report.values()]
        return (all(verdicts) if policy == "all" else any(verdicts)), report

    def model_readiness(self, name: str) -> dict[str, Any]:
        """One model's report (`ready`, `state`, `replicas`); 404 for an unknown model."""
        replicas = self._by_name.get(name)
        if replicas is None:
            raise ModelNotFoundError(name, self.names())
        return _model_report(replicas)


def _model_report(replicas: list[Backend]) -> dict[str, Any]:
    states = {backend.status.state for backend in replicas}
    state = next(s for s in _MOST_HOPEFUL_FIRST if s in states)
    return {
        "ready": state is State.READY,
        "state": state.value,
        "replicas": [backend.describe() for backend in replicas],
    }


def _states(replicas: list[Backend]) -> str:
    parts = []
    for backend in replicas:
        status = backend.status
        parts.append(status.state.value + (f": {status.reason}" if status.reason else ""))
    return "; ".join(parts)
