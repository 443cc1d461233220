"""Per-key rate limits shared by several worker processes (`serve --workers N`).

One table in a file every worker maps (mmap), guarded by an exclusive `flock` held only for
the few reads and writes of one admission (no await inside), so every worker sees the same
token buckets and the same requests in flight: the limits hold for the gateway as a whole,
whichever worker a connection lands on. Shares per worker (rpm / N) would add up too, but
the kernel does not spread connections evenly, so a client on a busy worker would be refused
well below its limit.

A slot per caller (open addressing on a 64-bit hash of who is counted): the hash, then
(tokens, updated) for the gateway's per-minute bucket and the key's own, then one in-flight
count per worker. Counting in flight per worker is what makes a killed worker harmless: its
replacement zeroes its own column at start, so requests that died with it stop counting.
`time.monotonic` is CLOCK_MONOTONIC, one clock for every process on the machine, and never 0
on a running one (0 marks a bucket not used yet).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from vlm_gateway.core.errors import RateLimitError
from vlm_gateway.server.door.limits import _Bucket, _in_flight_refusal, _Limit, _rate_refusal

log = logging.getLogger(__name__)

_MAGIC = b"VLMGWRL1"
_HEADER = struct.Struct("<8sII")  # magic, slots, workers
_HASH = struct.Struct("<Q")
_BUCKETS = struct.Struct("<dddd")  # (tokens, updated) x (gateway's limit, key's own)
_PROBES = 64  # slots tried from a caller's home slot before giving up
_IDLE_S = 60.0  # a bucket idle this long has refilled whatever its rate: the slot is reusable
_KNOWN_MAX = 100_000  # callers whose slot a worker remembers (then it forgets them all)


class SharedUsageTable:
    """The table, as one worker (`worker`: its column of in-flight counts) sees it."""

    def __init__(self, path: Path, worker: int) -> None:
        self._file = open(path, "r+b")  # noqa: SIM115 (kept open for the mapping's lifetime)
        self._map = mmap.mmap(self._file.fileno(), 0)
        magic, self._slots, self._workers = _HEADER.unpack_from(self._map, 0)
        if magic != _MAGIC or not 0 <= worker < self._workers:
            raise ValueError(f"{path} is not a usage table for worker {worker}")
        self._worker = worker
        self._in_flight = struct.Struct(f"<{self._workers}i")
        self._slot_size = _HASH.size + _BUCKETS.size + self._in_flight.size
        # Where each caller was last found: checked against the slot's key before use, since
        # another worker may have given an idle slot to someone else since.
        self._known: dict[str, tuple[int, int]] = {}

    @staticmethod
    def create(path: Path, workers: int, slots: int = 16384) -> None:
        """A zeroed table for `workers` processes (the supervisor makes it before any starts)."""
        slot_size = _HASH.size + _BUCKETS.size + 4 * workers
        with open(path, "wb") as table:
            table.write(_HEADER.pack(_MAGIC, slots, workers))
            table.truncate(_HEADER.size + slots * slot_size)

    def close(self) -> None:
        self._map.close()
        self._file.close()

    def forget_own_requests(self) -> None:
        """A (re)started worker: requests its predecessor had in flight died with it."""
        with self._locked():
            for slot in range(self._slots):
                offset = self._offset(slot) + _HASH.size + _BUCKETS.size + 4 * self._worker
                struct.pack_into("<i", self._map, offset, 0)

    # -- the limiter's two calls ---------------------------------------------------------------

    def admit(
        self, who: str, shown_as: str, limits: Sequence[_Limit], now: float
    ) -> RateLimitError | None:
        """The refusal of a limit that says no, else None with a token taken from every
        per-minute bucket and one request added to this worker's in-flight count."""
        with self._locked():
            slot = self._slot_of(who, now)
            if slot is None:
                log.warning("rate-limit table full: %s is not limited this time", shown_as)
                return None
            in_flight = list(self._in_flights(slot))
            for limit in limits:
                if limit.max_in_flight is not None and sum(in_flight) >= limit.max_in_flight:
                    return _in_flight_refusal(shown_as, limit)
            refusal = self._take_tokens(slot, shown_as, limits, now)
            if refusal is None:
                in_flight[self._worker] += 1
                self._in_flight.pack_into(self._map, self._in_flight_offset(slot), *in_flight)
            return refusal

    def release(self, who: str) -> None:
        with self._locked():
            slot = self._known_slot(who)
            if slot is not None:
                offset = self._in_flight_offset(slot) + 4 * self._worker
                (count,) = struct.unpack_from("<i", self._map, offset)
                struct.pack_into("<i", self._map, offset, max(0, count - 1))

    # -- inside the lock -----------------------------------------------------------------------

    def _take_tokens(
        self, slot: int, shown_as: str, limits: Sequence[_Limit], now: float
    ) -> RateLimitError | None:
        offset = self._offset(slot) + _HASH.size
        stored = list(_BUCKETS.unpack_from(self._map, offset))
        buckets: list[tuple[_Limit, _Bucket, int]] = []
        for index, limit in enumerate(limits[:2]):  # the gateway's limit, then the key's own
            rpm = limit.requests_per_minute
            if rpm is None:
                continue
            tokens, updated = stored[2 * index], stored[2 * index + 1]
            bucket = _Bucket(rpm, tokens, updated) if updated else _Bucket(rpm, float(rpm), now)
            bucket.refill(now)
            buckets.append((limit, bucket, index))
        empty = [(bucket.wait_s(), limit) for limit, bucket, _ in buckets if bucket.tokens < 1.0]
        if not empty:
            for _, bucket, _ in buckets:
                bucket.tokens -= 1.0
        for _, bucket, index in buckets:
            stored[2 * index], stored[2 * index + 1] = bucket.tokens, bucket.updated
        _BUCKETS.pack_into(self._map, offset, *stored)
        if empty:
            wait, limit = max(empty, key=lambda found: found[0])
            return _rate_refusal(shown_as, limit, wait)
        return None

    def _slot_of(self, who: str, now: float) -> int | None:
        """The caller's slot; a free one (or an idle one, reset) claimed when it has none."""
        found = self._known_slot(who)
        if found is not None:
            return found
        key = self._known[who][0]
        for slot in self._probe(key):
            if self._key_at(slot) == 0 or self._idle(slot, now):
                start = self._offset(slot)
                self._map[start : start + self._slot_size] = bytes(self._slot_size)
                _HASH.pack_into(self._map, start, key)
                self._known[who] = (key, slot)
                return slot
        return None

    def _known_slot(self, who: str) -> int | None:
        """The caller's slot if it has one (from the cache when still its own)."""
        known = self._known.get(who)
        if known is None:
            if len(self._known) >= _KNOWN_MAX:
                self._known.clear()
            known = self._known[who] = (_hash(who), -1)
        key, slot = known
        if slot >= 0 and self._key_at(slot) == key:
            return slot
        found = self._find(key)
        self._known[who] = (key, found if found is not None else -1)
        return found

    def _find(self, key: int) -> int | None:
        for slot in self._probe(key):
            stored = self._key_at(slot)
            if stored == key:
                return slot
            if stored == 0:
                return None
        return None

    def _idle(self, slot: int, now: float) -> bool:
        _, gateway_updated, _, own_updated = _BUCKETS.unpack_from(
            self._map, self._offset(slot) + _HASH.size
        )
        last = max(gateway_updated, own_updated)
        return not any(self._in_flights(slot)) and now - last >= _IDLE_S

    def _probe(self, key: int) -> Iterator[int]:
        home = key % self._slots
        return ((home + step) % self._slots for step in range(_PROBES))

    def _key_at(self, slot: int) -> int:
        return int(_HASH.unpack_from(self._map, self._offset(slot))[0])

    def _in_flights(self, slot: int) -> tuple[int, ...]:
        return tuple(self._in_flight.unpack_from(self._map, self._in_flight_offset(slot)))

    def _offset(self, slot: int) -> int:
        return _HEADER.size + slot * self._slot_size

    def _in_flight_offset(self, slot: int) -> int:
        return self._offset(slot) + _HASH.size + _BUCKETS.size

    def _locked(self) -> _Lock:
        return _Lock(self._file.fileno())


class _Lock:
    """flock as a plain context manager (contextlib's generator costs more than the lock)."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


def _hash(who: str) -> int:
    """64 bits of a caller's id; never 0 (0 marks a free slot)."""
    digest = int.from_bytes(hashlib.blake2b(who.encode(), digest_size=8).digest(), "little")
    return digest or 1


def table_path(runtime_dir: str | os.PathLike[str]) -> Path:
    return Path(runtime_dir) / "rate-limits.table"
