"""Request limits as pure ASGI middleware: the body-size cap (413) and per-key requests per
minute and requests in flight (429 with Retry-After)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlm_gateway.core.errors import PayloadTooLargeError, RateLimitError
from vlm_gateway.core.metrics import BODY_SIZE, RATE_LIMIT
from vlm_gateway.server.door.keys import CALLER_SCOPE
from vlm_gateway.server.door.reply import header, send_error
from vlm_gateway.server.door.request_metrics import note_refusal


class BodyLimitMiddleware:
    """Refuses a declared Content-Length over the cap before reading a byte; a chunked body is
    counted as it arrives and refused as soon as it passes the cap."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self._max = max_bytes
        self._path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._path_limits.get(scope["path"], self._max)
        declared = header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            note_refusal(scope, BODY_SIZE)
            await send_error(send, _too_large(limit))
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    note_refusal(scope, BODY_SIZE)
                    raise _too_large(limit)  # the route's handler answers it with a 413
            return message

        await self.app(scope, counted_receive, send)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The request body is larger than the limit of {limit} bytes (security.max_body_bytes)."
    )


@dataclass
class _Bucket:
    tokens: float
    updated: float
    in_flight: int = 0


class RateLimitMiddleware:
    """Per caller (API key, or client address when keys are off): a token bucket refilled at
    requests_per_minute / 60 per second holding at most requests_per_minute, and a cap on
    requests in flight. Public paths (health checks) are not counted."""

    _PRUNE_AT = 10_000

    def __init__(
        self,
        app: ASGIApp,
        requests_per_minute: int | None,
        max_in_flight: int | None,
        public_paths: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self._rpm = requests_per_minute
        self._max_in_flight = max_in_flight
        self._public = frozenset(public_paths)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._public:
            await self.app(scope, receive, send)
            return
        bucket = self._bucket(_caller(scope))
        refusal = self._refusal(bucket)
        if refusal is not None:
            note_refusal(scope, RATE_LIMIT)
            await send_error(send, refusal)
            return
        bucket.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            bucket.in_flight -= 1

    def _bucket(self, caller: str) -> _Bucket:
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= self._PRUNE_AT:
                self._prune()
            bucket = self._buckets[caller] = _Bucket(float(self._rpm or 0), self._clock())
        return bucket

    def _refusal(self, bucket: _Bucket) -> RateLimitError | None:
        if self._max_in_flight is not None and bucket.in_flight >= self._max_in_flight:
            return RateLimitError(
                f"Too many requests in flight for this API key (limit {self._max_in_flight}).",
                headers={"retry-after": "1"},
            )
        if self._rpm is None:
            return None
        now = self._clock()
        rate = self._rpm / 60.0
        bucket.tokens = min(float(self._rpm), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        wait = max(1, math.ceil((1.0 - bucket.tokens) / rate))
        return RateLimitError(
            f"Rate limit reached for this API key: {self._rpm} requests per minute. "
            f"Retry in {wait} s.",
            headers={"retry-after": str(wait)},
        )

    def _prune(self) -> None:
        """Forget idle callers whose bucket has refilled: they are indistinguishable from new."""
        now, rate = self._clock(), (self._rpm or 0) / 60.0
        for caller, bucket in list(self._buckets.items()):
            full = bucket.tokens + (now - bucket.updated) * rate >= (self._rpm or 0)
            if bucket.in_flight == 0 and full:
                del self._buckets[caller]


def _caller(scope: Scope) -> str:
    caller = scope.get(CALLER_SCOPE)
    if caller is not None:
        return str(caller.name)
    client: tuple[str, int] | None = scope.get("client")
    return "addr-" + (client[0] if client else "unknown")
