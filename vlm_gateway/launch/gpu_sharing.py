"""Several vLLM processes on one GPU: split its memory, and start them one after another.

vLLM sizes its KV cache from the GPU memory it sees free at start, so two servers starting at
once count each other's memory (vLLM #9198, #17979). Each process therefore gets a declared
fraction (`gpu_memory_utilization`), and the processes that share a GPU start in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable, Iterable
from dataclasses import dataclass

# What all processes on one GPU may claim together: the rest is CUDA context and fragmentation.
MAX_SHARED_UTILIZATION = 0.95


@dataclass(frozen=True)
class GpuClaim:
    owner: Hashable  # e.g. ("blip2", 0): model name and replica index
    gpus: tuple[int, ...] | None  # None: not pinned; not part of any split
    utilization: float | None  # None: take an even share of what is left


def split_gpu_memory(claims: Iterable[GpuClaim]) -> dict[Hashable, float | None]:
    """Each owner's gpu_memory_utilization. Raises ValueError naming the GPU that is over.

    A process alone on its GPUs keeps what it declared (None: vLLM's default). Undeclared
    processes sharing a GPU split what the declared ones leave of MAX_SHARED_UTILIZATION."""
    claims = list(claims)
    by_gpu: dict[int, list[GpuClaim]] = {}
    for claim in claims:
        for gpu in claim.gpus or ():
            by_gpu.setdefault(gpu, []).append(claim)
    shares: dict[Hashable, float | None] = {claim.owner: claim.utilization for claim in claims}
    for gpu, sharing in sorted(by_gpu.items()):
        declared = sum(c.utilization for c in sharing if c.utilization is not None)
        undeclared = [c for c in sharing if c.utilization is None]
        if declared > MAX_SHARED_UTILIZATION + 1e-9:
            raise ValueError(_over(gpu, sharing, declared))
        if len(sharing) < 2 or not undeclared:
            continue
        left = MAX_SHARED_UTILIZATION - declared
        if left < 0.05:
            raise ValueError(
                _over(gpu, sharing, declared)
                + "; nothing is left for "
                + ", ".join(_label(c.owner) for c in undeclared)
            )
        even = round(left / len(undeclared), 3)
        for claim in undeclared:
            current = shares[claim.owner]
            shares[claim.owner] = even if current is None else min(current, even)
    return shares


def _over(gpu: int, sharing: list[GpuClaim], declared: float) -> str:
    parts = ", ".join(f"{_label(c.owner)}={c.utilization}" for c in sharing if c.utilization)
    return (
        f"GPU {gpu}: gpu_memory_utilization of the processes sharing it sums to "
        f"{declared:.2f} ({parts}), more than {MAX_SHARED_UTILIZATION}"
    )


def _label(owner: Hashable) -> str:
    if isinstance(owner, tuple) and len(owner) == 2:
        return f"{owner[0]}[{owner[1]}]"
    return str(owner)


class StartSequencer:
    """Processes that share a GPU take turns to start: one holds the turn from launch until
    ready (or failed). One sequencer is built per app and handed to every managed backend."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def turn(self, gpus: tuple[int, ...] | None) -> AsyncIterator[None]:
        # Unpinned processes see every GPU: they take turns among themselves.
        keys = sorted(f"gpu{gpu}" for gpu in gpus) if gpus else ["unpinned"]
        async with contextlib.AsyncExitStack() as stack:
            for key in keys:  # always in sorted order, so two claims cannot deadlock
                await stack.enter_async_context(self._locks.setdefault(key, asyncio.Lock()))
            yield
