"""Several vLLM processes on one GPU: split its memory, and start them one after another.

vLLM sizes its KV cache from the GPU memory it sees free at start, so two servers starting at
once count each other's memory (vLLM #9198, #17979). Each process therefore gets a declared
fraction (`gpu_memory_utilization`), and the processes that share a GPU start in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable, Iterable, Mapping
from dataclasses import dataclass

# What all processes on one GPU may claim together: the rest is CUDA context and fragmentation.
MAX_SHARED_UTILIZATION = 0.95


@dataclass(frozen=True)
class GpuClaim:
    owner: Hashable  # e.g. ("blip2", 0): model name and replica index
    gpus: tuple[int, ...] | None  # None: not pinned; not part of any split
    utilization: float | None  # None: take an even share of what is left
    # Loaded on demand: the on-demand processes of a GPU take turns in what the others leave
    # (the on-demand manager keeps the loaded ones within MAX_SHARED_UTILIZATION).
    on_demand: bool = False


def split_gpu_memory(claims: Iterable[GpuClaim]) -> dict[Hashable, float | None]:
    """Each owner's gpu_memory_utilization. Raises ValueError naming the GPU that is over.

    A process alone on its GPUs keeps what it declared (None: vLLM's default). Undeclared
    processes sharing a GPU split what the declared ones leave of MAX_SHARED_UTILIZATION; the
    undeclared on-demand ones count as one sharer among them, since they take turns (alone
    with each other, each may have all of it). Every on-demand claim must fit beside what the
    processes loaded at startup hold, or it could never load."""
    claims = list(claims)
    by_gpu: dict[int, list[GpuClaim]] = {}
    for claim in claims:
        for gpu in claim.gpus or ():
            by_gpu.setdefault(gpu, []).append(claim)
    shares: dict[Hashable, float | None] = {claim.owner: claim.utilization for claim in claims}
    for gpu, sharing in sorted(by_gpu.items()):
        resident = [c for c in sharing if not c.on_demand]
        declared = sum(c.utilization for c in resident if c.utilization is not None)
        if declared > MAX_SHARED_UTILIZATION + 1e-9:
            raise ValueError(_over(gpu, resident, declared))
        if len(sharing) < 2:
            continue
        _split_the_rest(gpu, sharing, declared, shares)
        _check_on_demand_fit(gpu, sharing, shares)
    return shares


def _split_the_rest(
    gpu: int, sharing: list[GpuClaim], declared: float, shares: dict[Hashable, float | None]
) -> None:
    undeclared = [c for c in sharing if c.utilization is None and not c.on_demand]
    turn_takers = [c for c in sharing if c.utilization is None and c.on_demand]
    sharers = len(undeclared) + (1 if turn_takers else 0)
    if not sharers:
        return
    left = MAX_SHARED_UTILIZATION - declared
    if left < 0.05:
        raise ValueError(
            _over(gpu, sharing, declared)
            + "; nothing is left for "
            + ", ".join(_label(c.owner) for c in undeclared + turn_takers)
        )
    even = round(left / sharers, 3)
    for claim in undeclared + turn_takers:
        current = shares[claim.owner]
        shares[claim.owner] = even if current is None else min(current, even)


def _check_on_demand_fit(
    gpu: int, sharing: list[GpuClaim], shares: dict[Hashable, float | None]
) -> None:
    resident = sum(shares[c.owner] or 0.0 for c in sharing if not c.on_demand)
    for claim in sharing:
        own = shares[claim.owner] or 0.0
        if claim.on_demand and resident + own > MAX_SHARED_UTILIZATION + 1e-9:
            raise ValueError(
                f"GPU {gpu}: {_label(claim.owner)} (load: on_demand) claims {own:g} of it, but "
                f"the processes loaded at startup hold {resident:.2f}: together more than "
                f"{MAX_SHARED_UTILIZATION}, so it could never load"
            )


def gpu_use(claim: GpuClaim, share: float | None) -> dict[int, float]:
    """What a process holds of each GPU it is pinned to, for the on-demand budget: its share,
    or all of it for one alone on its GPUs with vLLM's default (None)."""
    return {gpu: MAX_SHARED_UTILIZATION if share is None else share for gpu in claim.gpus or ()}


def over_committed(uses: Iterable[Mapping[int, float]]) -> int | None:
    """The first GPU that the given holdings together put over MAX_SHARED_UTILIZATION."""
    totals: dict[int, float] = {}
    for use in uses:
        for gpu, share in use.items():
            totals[gpu] = totals.get(gpu, 0.0) + share
    over = [gpu for gpu, total in sorted(totals.items()) if total > MAX_SHARED_UTILIZATION + 1e-9]
    return over[0] if over else None


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
