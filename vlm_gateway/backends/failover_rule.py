"""Which failed attempts are tried on another replica: the one decision server/failover.py
asks, before its bounds (attempts, retry budget, deadline, the client still there).

- A failure before the upstream's answer (refused or broken connection, no head in time) that
  the backend marked `retryable`: yes.
- An upstream answer whose status is in the model's `failover_on` (default 500, 502, 503,
  504): yes, unless the request already got a 500 from `POISON_AFTER` replicas. A replica
  that answers 500 to everything is failed over like a 502; a request that breaks every
  replica it reaches is not carried to a third one (the poison-request guard), whatever the
  cap on attempts.
- Anything else (a 4xx, an error after the head or inside a stream): no.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from vlm_gateway.config.settings import DEFAULT_FAILOVER_ON
from vlm_gateway.core.errors import GatewayError

POISON_STATUS = 500
POISON_AFTER = 2  # replicas that answered the request 500: no further one is asked


class FailoverRule:
    """`failover_on(model)` is the model's setting (its first entry's)."""

    def __init__(self, failover_on: Callable[[str], Collection[int]] | None = None) -> None:
        self._failover_on = failover_on or (lambda _model: DEFAULT_FAILOVER_ON)

    def fails_over(self, model: str, failures: Sequence[GatewayError]) -> bool:
        """Whether a request of `model` whose attempts so far failed with `failures` (the
        latest last) may be tried on another replica."""
        latest = failures[-1]
        if latest.upstream_status is None:
            return latest.retryable
        if latest.upstream_status not in self._failover_on(model):
            return False
        poisoned = sum(failure.upstream_status == POISON_STATUS for failure in failures)
        return poisoned < POISON_AFTER
