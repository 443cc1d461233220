from fastapi import APIRouter, Request, Response

from vlm_gateway.server.drain import drain_of
from vlm_gateway.server.route_helpers import json_response
from vlm_gateway.server.state import gateway_state

router = APIRouter()


@router.get("/health")
async def health() -> Response:
    """The gateway process is up. Says nothing about models: that is /ready."""
    return json_response({"status": "ok"})


@router.get("/ready")
async def ready(request: Request, model: str | None = None) -> Response:
    """`?model=NAME`: 200 when that model has a ready backend, else 503 with its state (404 for
    an unknown one). Bare: 200 when `ready_policy` holds (all: every model ready; any: one).
    While the gateway drains (SIGTERM), 503 `draining` for every question."""
    drain = drain_of(request)
    if drain is not None and drain.draining:  # shutting down: send traffic elsewhere, at once
        reason = "the gateway is shutting down (draining its open requests)"
        return json_response({"status": "draining", "reason": reason}, status_code=503)
    state = gateway_state(request)
    if model is not None:
        report = state.registry.model_readiness(model)
        is_ready, body = report["ready"], {"model": model, "models": {model: report}}
    else:
        policy = state.settings.ready_policy
        is_ready, models = state.registry.readiness(policy)
        body = {"policy": policy, "models": models}
    return json_response(
        {"status": "ready" if is_ready else "not_ready", **body},
        status_code=200 if is_ready else 503,
    )
