"""What may be loaded at once (docs/on-demand.md): `max_loaded_models` models the gateway
holds, and on each GPU the memory the loaded models' processes claim (launch/gpu_sharing.py's
shares) within MAX_SHARED_UTILIZATION. The models loaded at startup always count; the
on-demand manager (backends/ondemand/) asks whether a set of on-demand models fits beside
them, and check-config prints which of them fit together."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from vlm_gateway.config.on_demand import describe_seconds
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.launch.gpu_sharing import gpu_use, over_committed

# check-config lists the groups that fit together only for this many on-demand models (the
# search looks at every subset).
_MAX_GROUPED = 10


@dataclass(frozen=True)
class LoadBudget:
    max_models: int | None  # None: no cap on the count
    resident: tuple[str, ...] = ()  # held from startup on: always count
    # model -> what its processes hold of each GPU when it is loaded (all replicas)
    gpu_use: Mapping[str, Mapping[int, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: GatewaySettings) -> LoadBudget:
        shares = settings.gpu_shares()
        uses: dict[str, dict[int, float]] = {}
        for entry in settings.models:
            use = uses.setdefault(entry.name, {})
            for claim in entry.gpu_claims():
                for gpu, share in gpu_use(claim, shares.get(claim.owner)).items():
                    use[gpu] = use.get(gpu, 0.0) + share
        resident = tuple(settings.local_model_names("startup"))
        return cls(settings.max_loaded_models, resident, uses)

    def why_not(self, loaded: Collection[str]) -> str | None:
        """Why these on-demand models cannot be loaded together (beside the resident ones),
        or None when they can."""
        count = len(self.resident) + len(loaded)
        if self.max_models is not None and count > self.max_models:
            return f"max_loaded_models is {self.max_models}"
        gpu = over_committed(self.gpu_use.get(name, {}) for name in (*self.resident, *loaded))
        if gpu is not None:
            return f"GPU {gpu}'s memory is claimed by the models loaded on it"
        return None

    def fits(self, loaded: Collection[str]) -> bool:
        return self.why_not(loaded) is None

    def groups(self, names: list[str]) -> list[tuple[str, ...]] | None:
        """The largest sets of `names` that fit together (each not part of a larger one), in
        config order; None when there are too many names to look at every set."""
        if len(names) > _MAX_GROUPED:
            return None
        fitting: list[tuple[str, ...]] = []
        for size in range(len(names), 0, -1):
            for group in itertools.combinations(names, size):
                if self.fits(group) and not any(set(group) <= set(f) for f in fitting):
                    fitting.append(group)
        return fitting


def load_plan_lines(settings: GatewaySettings) -> list[str]:
    """check-config's and the start-up log's lines: which models load at startup, which on
    demand (with their idle time), and which of those can be loaded together."""
    on_demand = settings.on_demand_models()
    if not on_demand:
        return []
    at_startup = settings.local_model_names("startup")
    cap = settings.max_loaded_models
    lines = [
        "loading: at startup "
        + (", ".join(at_startup) or "(none)")
        + "; on demand "
        + ", ".join(
            f"{name} (idle_unload {describe_seconds(settings.entries_for(name)[0].idle_unload)})"
            for name in on_demand
        ),
        f"  budget: max_loaded_models {cap if cap is not None else '(no cap)'}, and each GPU's "
        "memory as the loaded models' processes claim it",
    ]
    groups = LoadBudget.of(settings).groups(on_demand)
    if groups is None:
        lines.append(f"  {len(on_demand)} on-demand models: too many to list which fit together")
    else:
        said = "; ".join("{" + ", ".join(group) + "}" for group in groups)
        lines.append(f"  loaded together at most: {said}")
    return lines
