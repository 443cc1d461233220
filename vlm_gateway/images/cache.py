"""A least-recently-used cache bounded by the bytes it holds, with a time-to-live."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    def __init__(
        self, max_bytes: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.size = 0
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, int, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, _, value = item
        if self._clock() >= expires:
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: str, value: V, size: int) -> None:
        if size > self.max_bytes or self.ttl <= 0:
            return  # would evict everything else and still not fit
        if key in self._items:
            self._drop(key)
        self._items[key] = (self._clock() + self.ttl, size, value)
        self.size += size
        while self.size > self.max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        _, size, _ = self._items.pop(key)
        self.size -= size
