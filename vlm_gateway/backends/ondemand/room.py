"""The eviction rule (docs/on-demand.md): to load a model that does not fit beside those
loaded, unload idle ones (nothing in flight, nobody waiting), least recently used first, and
only those whose unloading helps; a model in use is never unloaded: the load waits instead."""

from __future__ import annotations

from collections.abc import Iterable

from vlm_gateway.backends.ondemand.slot import ModelSlot, Phase
from vlm_gateway.config.load_budget import LoadBudget


def victims(
    budget: LoadBudget, slot: ModelSlot, slots: Iterable[ModelSlot]
) -> list[ModelSlot] | None:
    """The models to unload so that `slot` fits: [] when it fits already, None when even
    unloading every idle one would not make room (then the load waits for room)."""
    others = [other for other in slots if other is not slot]
    occupying = [other.name for other in others if other.occupies()]
    if budget.fits([*occupying, slot.name]):
        return []
    idle = [o for o in others if o.phase is Phase.LOADED and not o.busy()]
    chosen: list[ModelSlot] = []
    for candidate in sorted(idle, key=lambda other: other.used_at):
        if not _helps(budget, candidate, slot, len(occupying) - len(chosen)):
            continue
        chosen.append(candidate)
        left = [name for name in occupying if all(name != c.name for c in chosen)]
        if budget.fits([*left, slot.name]):
            return chosen
    return None


def _helps(budget: LoadBudget, candidate: ModelSlot, slot: ModelSlot, occupying: int) -> bool:
    """Unloading `candidate` frees what `slot` lacks: a place under max_loaded_models, or
    memory on a GPU that `slot` needs."""
    over_count = (
        budget.max_models is not None and len(budget.resident) + occupying + 1 > budget.max_models
    )
    shared_gpus = set(budget.gpu_use.get(candidate.name, {})) & set(
        budget.gpu_use.get(slot.name, {})
    )
    return over_count or bool(shared_gpus)


def blockers(slot: ModelSlot, slots: Iterable[ModelSlot]) -> str:
    """The loaded models that cannot be unloaded now, in words (why a load waits)."""
    said = []
    for other in slots:
        if other is slot or not other.occupies():
            continue
        in_flight = sum(backend.in_flight for backend in other.replicas)
        if other.phase is not Phase.LOADED:
            said.append(f"{other.name} ({other.phase.value})")
        elif other.busy():
            said.append(f"{other.name} ({in_flight} in flight, {other.waiting} waiting)")
    return ", ".join(said) or "none"
