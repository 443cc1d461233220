"""The one block the gateway logs as it starts: where it listens, how the bare /ready decides,
and each model with its backend, replicas and where each replica is in loading (the progress
lines of a managed vLLM follow in the log)."""

from __future__ import annotations

from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.load_budget import load_plan_lines
from vlm_gateway.config.settings import GatewaySettings


def startup_summary(settings: GatewaySettings, registry: BackendRegistry) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    names = registry.names()
    lines = [
        f"vlm-gateway listening on http://{host}:{settings.port} with {len(names)} model(s); "
        f"GET /ready: ready_policy {settings.ready_policy}, GET /ready?model=NAME for one model"
    ]
    lines += [_model_line(registry, name) for name in names]
    lines += load_plan_lines(settings)  # which models load at startup, which on demand
    return "\n".join(lines)


def _model_line(registry: BackendRegistry, name: str) -> str:
    replicas = [backend.describe() for backend in registry.replicas(name)]
    kinds = ", ".join(dict.fromkeys(str(replica["backend"]) for replica in replicas))
    states = "; ".join(
        str(replica["state"]) + (f" ({replica['reason']})" if replica.get("reason") else "")
        for replica in replicas
    )
    count = f"{len(replicas)} replica" + ("s" if len(replicas) > 1 else "")
    line = f"  model {name}: backend {kinds}, {count}: {states}"
    logs = [str(replica["log_file"]) for replica in replicas if replica.get("log_file")]
    if logs:  # a managed process's own output goes only there
        line += "; log " + ", ".join(logs)
    return line
