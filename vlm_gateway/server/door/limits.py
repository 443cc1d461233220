"""Request limits, checked by the door (door.py) before a request goes in: the body-size cap
(413) and per-key requests per minute and requests in flight, the gateway's and each key's own
(429 with Retry-After)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from starlette.types import Message, Receive, Scope

from vlm_gateway.core.errors import PayloadTooLargeError, RateLimitError
from vlm_gateway.core.metrics import BODY_SIZE
from vlm_gateway.server.door.keys import CALLER_SCOPE, Caller
from vlm_gateway.server.door.reply import header
from vlm_gateway.server.door.request_metrics import note_refusal


class BodyLimit:
    """The body-size cap: a declared Content-Length over it is refused before a byte is read;
    a body without one (chunked) is counted as it arrives and refused as soon as it passes."""

    def __init__(self, max_bytes: int, path_limits: Mapping[str, int] | None = None) -> None:
        self._max = max_bytes
        self._path_limits = dict(path_limits or {})

    def refusal(self, scope: Scope) -> PayloadTooLargeError | None:
        """The 413 for a declared length over the path's cap; None when it fits or is unsaid."""
        limit = self._path_limits.get(scope["path"], self._max)
        declared = header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return _too_large(limit)
        return None

    def counted(self, scope: Scope, receive: Receive) -> Receive:
        """`receive` as it is when the length was declared (and checked); else one that counts
        the body's pieces and raises the 413 once they pass the cap (the route's handler
        answers it)."""
        if header(scope, b"content-length") is not None:
            return receive
        limit = self._path_limits.get(scope["path"], self._max)
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    note_refusal(scope, BODY_SIZE)
                    raise _too_large(limit)
            return message

        return counted_receive


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The request body is larger than the limit of {limit} bytes (security.max_body_bytes)."
    )


@dataclass(frozen=True)
class _Limit:
    """One set of limits on a caller, the gateway's per-key default or a key's own; a refusal
    names it (`whose`) and the setting behind it."""

    whose: str
    requests_per_minute: int | None
    max_in_flight: int | None
    rpm_setting: str
    in_flight_setting: str


def _gateway_limit(requests_per_minute: int | None, max_in_flight: int | None) -> _Limit:
    return _Limit(
        "the gateway's per-key limit",
        requests_per_minute,
        max_in_flight,
        "security.requests_per_minute",
        "security.max_in_flight_per_key",
    )


def _own_limit(caller: Caller) -> _Limit:
    return _Limit(
        "the key's own limit",
        caller.requests_per_minute,
        caller.max_in_flight,
        "security.keys[].requests_per_minute",
        "security.keys[].max_in_flight",
    )


@dataclass
class _Bucket:
    """A token bucket: `rpm` tokens at most, refilled at rpm / 60 per second."""

    rpm: int
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        self.tokens = min(float(self.rpm), self.tokens + (now - self.updated) * self.rpm / 60.0)
        self.updated = now

    def wait_s(self) -> int:
        """Whole seconds until the next token is back."""
        return max(1, math.ceil((1.0 - self.tokens) / (self.rpm / 60.0)))


class SharedUsage(Protocol):
    """Usage counted outside this process, one table for every worker process
    (vlm_gateway/server/door/shared_limits.py)."""

    def admit(
        self, who: str, shown_as: str, limits: Sequence[_Limit], now: float
    ) -> RateLimitError | None: ...

    def release(self, who: str) -> None: ...


@dataclass
class _CallerUsage:
    in_flight: int = 0
    buckets: dict[str, _Bucket] = field(default_factory=dict)  # by the limit's rpm_setting

    def leave(self) -> None:
        self.in_flight -= 1


class RateLimiter:
    """Per caller (API key, or client address when keys are off): requests per minute (a token
    bucket holding at most requests_per_minute, refilled evenly) and requests in flight, for the
    gateway's per-key limits and each key's own (security.keys[]); every limit that applies
    must let the request through, and a refusal names the one that did not. Public paths
    (health checks) are not counted."""

    _PRUNE_AT = 10_000

    def __init__(
        self,
        requests_per_minute: int | None,
        max_in_flight: int | None,
        public_paths: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        shared: SharedUsage | None = None,
    ) -> None:
        self._gateway = _gateway_limit(requests_per_minute, max_in_flight)
        self._public = frozenset(public_paths)
        self._clock = clock
        self._usage: dict[str, _CallerUsage] = {}
        # Several worker processes: the counts live in their shared table instead.
        self._shared = shared

    def admit(self, scope: Scope) -> tuple[RateLimitError | None, Callable[[], None] | None]:
        """(the 429, None) for a refused request; (None, release) for one let through, where
        `release` gives its in-flight slot back when it ends; (None, None) for public paths."""
        if scope["path"] in self._public:
            return None, None
        who, shown_as, limits = self._limits_of(scope)
        if self._shared is not None:
            shared = self._shared
            refusal = shared.admit(who, shown_as, limits, self._clock())
            return (refusal, None) if refusal is not None else (None, lambda: shared.release(who))
        usage = self._usage_of(who)
        refusal = self._refusal(shown_as, usage, limits)
        if refusal is not None:
            return refusal, None
        usage.in_flight += 1
        return None, usage.leave

    def _limits_of(self, scope: Scope) -> tuple[str, str, list[_Limit]]:
        """Who is counted (a key by its name, or else the client's address), how a refusal
        names them (never by the key itself), and the limits that apply."""
        caller = scope.get(CALLER_SCOPE)
        if isinstance(caller, Caller):
            limits = [self._gateway, _own_limit(caller)]
            return "key:" + caller.name, f"API key '{caller.name}'", limits
        client: tuple[str, int] | None = scope.get("client")
        return "addr:" + (client[0] if client else "unknown"), "this client", [self._gateway]

    def _usage_of(self, who: str) -> _CallerUsage:
        usage = self._usage.get(who)
        if usage is None:
            if len(self._usage) >= self._PRUNE_AT:
                self._prune()
            usage = self._usage[who] = _CallerUsage()
        return usage

    def _refusal(
        self, shown_as: str, usage: _CallerUsage, limits: list[_Limit]
    ) -> RateLimitError | None:
        """The 429 naming a limit that refuses (for the per-minute ones, the one that frees up
        last); None, and a token taken from every per-minute bucket, when all let it through."""
        for limit in limits:
            if limit.max_in_flight is not None and usage.in_flight >= limit.max_in_flight:
                return _in_flight_refusal(shown_as, limit)
        now = self._clock()
        buckets = [
            (limit, bucket)
            for limit in limits
            if (bucket := self._bucket(usage, limit, now)) is not None
        ]
        empty = [(bucket.wait_s(), limit) for limit, bucket in buckets if bucket.tokens < 1.0]
        if empty:
            wait, limit = max(empty, key=lambda found: found[0])
            return _rate_refusal(shown_as, limit, wait)
        for _, bucket in buckets:
            bucket.tokens -= 1.0
        return None

    def _bucket(self, usage: _CallerUsage, limit: _Limit, now: float) -> _Bucket | None:
        rpm = limit.requests_per_minute
        if rpm is None:
            return None
        bucket = usage.buckets.get(limit.rpm_setting)
        if bucket is None:
            bucket = usage.buckets[limit.rpm_setting] = _Bucket(rpm, float(rpm), now)
        bucket.refill(now)
        return bucket

    def _prune(self) -> None:
        """Forget idle callers whose buckets have refilled: they are indistinguishable from new."""
        now = self._clock()
        for who, usage in list(self._usage.items()):
            for bucket in usage.buckets.values():
                bucket.refill(now)
            full = all(bucket.tokens >= bucket.rpm for bucket in usage.buckets.values())
            if usage.in_flight == 0 and full:
                del self._usage[who]


def _in_flight_refusal(shown_as: str, limit: _Limit) -> RateLimitError:
    return RateLimitError(
        f"Too many requests in flight for {shown_as}: {limit.whose} is "
        f"{limit.max_in_flight} ({limit.in_flight_setting}).",
        headers={"retry-after": "1"},
    )


def _rate_refusal(shown_as: str, limit: _Limit, wait: int) -> RateLimitError:
    return RateLimitError(
        f"Rate limit reached for {shown_as}: {limit.whose} is {limit.requests_per_minute} "
        f"requests per minute ({limit.rpm_setting}). Retry in {wait} s.",
        headers={"retry-after": str(wait)},
    )
