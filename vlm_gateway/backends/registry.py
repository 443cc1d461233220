"""Model name -> replicas, and the choice of replica for each request."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vlm_gateway.backends.base import Backend
from vlm_gateway.core.errors import ModelNotFoundError, ServiceUnavailableError


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

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        report = {
            name: {
                "ready": any(b.status.ready for b in replicas),
                "replicas": [b.describe() for b in replicas],
            }
            for name, replicas in self._by_name.items()
        }
        return all(entry["ready"] for entry in report.values()), report


def _states(replicas: list[Backend]) -> str:
    parts = []
    for backend in replicas:
        status = backend.status
        parts.append(status.state.value + (f": {status.reason}" if status.reason else ""))
    return "; ".join(parts)
