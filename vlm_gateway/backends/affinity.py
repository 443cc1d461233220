"""Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2017), for
image-affinity routing (`routing: affinity`, docs/reliability.md).

Each replica owns `VIRTUAL_NODES` points on a 64-bit ring; a request's key lands on the first
point at or after it, and the replicas are tried in ring order from there. A replica takes the
request only if it is eligible (ready, not ejected, not tried already) and, counting the request
being placed, stays within `LOAD_FACTOR` times the mean load of the eligible replicas:
`load + 1 <= ceil(LOAD_FACTOR * (total + 1) / eligible)`. So the same key keeps landing on the
same replica (its caches stay warm) until that replica is out or runs hot, and a replica that
leaves moves only its own keys: everyone else's stay where they were.

Pure: members are any hashable ids (the registry uses replica indices), loads are plain counts.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Generic, TypeVar

VIRTUAL_NODES = 160  # points per replica: keys spread within a few percent of even
LOAD_FACTOR = 1.25  # no replica above 1.25x the mean in flight (the bound)
_KEY_BYTES = 8

M = TypeVar("M", bound=Hashable)  # a member of the ring


def ring_key(data: bytes) -> int:
    """A 64-bit point on the ring for `data` (a request's affinity digest)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=_KEY_BYTES).digest(), "big")


class HashRing(Generic[M]):
    """The ring over a fixed list of members; which are eligible is asked per lookup."""

    def __init__(self, members: Sequence[M], virtual_nodes: int = VIRTUAL_NODES) -> None:
        if virtual_nodes < 1:
            raise ValueError("virtual_nodes must be at least 1")
        points = sorted(
            (ring_key(f"{member!r}#{v}".encode()), position)
            for position, member in enumerate(members)
            for v in range(virtual_nodes)
        )
        self._members = list(members)
        self._points = [point for point, _ in points]
        self._owners = [position for _, position in points]

    def walk(self, key: int) -> Iterator[M]:
        """Every member once, in ring order from the key's point."""
        if not self._points:
            return
        start = bisect.bisect_left(self._points, key)
        seen: set[int] = set()
        count = len(self._points)
        for step in range(count):
            position = self._owners[(start + step) % count]
            if position not in seen:
                seen.add(position)
                yield self._members[position]
                if len(seen) == len(self._members):
                    return

    def owner(self, key: int) -> M | None:
        """The member the key lands on with everyone eligible and idle."""
        return next(self.walk(key), None)

    def choose(
        self,
        key: int,
        load: Callable[[M], int],
        eligible: Callable[[M], bool],
        load_factor: float = LOAD_FACTOR,
    ) -> M | None:
        """The first eligible member in ring order whose load, with this request added, stays
        within the bound; None if no member is eligible. Some eligible member is always within
        the bound (not all can be above the mean), so None means none is eligible."""
        candidates = [m for m in self._members if eligible(m)]
        if not candidates:
            return None
        total = sum(load(m) for m in candidates)
        capacity = bounded_capacity(total, len(candidates), load_factor)
        for member in self.walk(key):
            if eligible(member) and load(member) + 1 <= capacity:
                return member
        return min(candidates, key=load)  # unreachable for load_factor >= 1; kept total


def bounded_capacity(total_load: int, members: int, load_factor: float = LOAD_FACTOR) -> int:
    """The most requests one of `members` may hold once the one being placed is counted."""
    return math.ceil(load_factor * (total_load + 1) / members)
