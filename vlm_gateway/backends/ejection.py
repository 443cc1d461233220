"""Outlier ejection: a replica that keeps failing is taken out of rotation for a while.

`eject_after` failures in a row (a 5xx, a refused connection, a timeout) eject a replica for a
cooldown: 5 s the first time, doubled on each ejection that follows without a success between,
at most 5 min. When the cooldown ends the replica is back on probation: the next request it
gets is the probe; a success clears its record, a failure ejects it again at once (with the
doubled cooldown). The last replica of a model that can serve is never ejected: its clients
get honest 502/503s instead of "no backend" (docs/reliability.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vlm_gateway.backends.base import Backend

log = logging.getLogger(__name__)

FIRST_COOLDOWN_S = 5.0
MAX_COOLDOWN_S = 300.0

# (model, replica number, cooldown seconds) -> None: told of each ejection (the app's metrics).
EjectionObserver = Callable[[str, int, float], None]


@dataclass
class _Record:
    failures: int = 0  # in a row
    ejections: int = 0  # in a row, without a success between: the cooldown doubles per one
    ejected_until: float = 0.0  # monotonic seconds


class OutlierEjector:
    """Failure records of every replica; `ejected()` is what the registry's pick asks."""

    def __init__(
        self,
        eject_after: Callable[[str], int],
        clock: Callable[[], float] = time.monotonic,
        observer: EjectionObserver | None = None,
    ) -> None:
        self._eject_after = eject_after  # model name -> its threshold
        self._clock = clock
        self._observer = observer
        self._records: dict[int, _Record] = {}  # id(backend) -> its record

    def _record(self, backend: Backend) -> _Record:
        return self._records.setdefault(id(backend), _Record())

    def ejected(self, backend: Backend) -> bool:
        record = self._records.get(id(backend))
        return record is not None and record.ejected_until > self._clock()

    def succeeded(self, backend: Backend, replica: int) -> None:
        record = self._records.get(id(backend))
        if record is None or (record.failures == 0 and record.ejections == 0):
            return
        if record.ejections:
            log.info("model %s: replica %d answered again: back in", backend.name, replica)
        self._records[id(backend)] = _Record()

    def failed(self, backend: Backend, replica: int, replicas: Sequence[Backend]) -> None:
        """Count a failure of `backend` (replica number `replica` of `replicas`); eject it if
        that makes `eject_after` in a row and another replica of its model can still serve."""
        record = self._record(backend)
        record.failures += 1
        on_probation = record.ejections > 0  # its cooldown ended and the probe failed
        if not on_probation and record.failures < self._eject_after(backend.name):
            return
        if self.ejected(backend) or not self._others_serve(backend, replicas):
            return
        cooldown = min(FIRST_COOLDOWN_S * 2**record.ejections, MAX_COOLDOWN_S)
        record.ejections += 1
        record.failures = 0
        record.ejected_until = self._clock() + cooldown
        log.warning(
            "model %s: replica %d ejected for %.0f s after failing %s (ejection %d in a row)",
            backend.name,
            replica,
            cooldown,
            "its probe" if on_probation else f"{self._eject_after(backend.name)} times in a row",
            record.ejections,
        )
        if self._observer is not None:
            self._observer(backend.name, replica, cooldown)

    def _others_serve(self, backend: Backend, replicas: Sequence[Backend]) -> bool:
        return any(
            other is not backend and other.status.ready and not self.ejected(other)
            for other in replicas
        )

    def describe(self, backend: Backend) -> dict[str, Any]:
        """Extension fields of the replica's card: empty while it has no failures."""
        record = self._records.get(id(backend))
        if record is None or (record.failures == 0 and record.ejections == 0):
            return {}
        left = record.ejected_until - self._clock()
        fields: dict[str, Any] = {
            "consecutive_failures": record.failures,
            "ejections_in_a_row": record.ejections,
        }
        if left > 0:
            fields["ejected_for_s"] = round(left, 1)
        return fields
