from fastapi import APIRouter, Request, Response

from vlm_gateway.server.route_helpers import json_response
from vlm_gateway.server.state import gateway_state

router = APIRouter()


@router.get("/health")
async def health() -> Response:
    """The gateway process is up. Says nothing about models: that is /ready."""
    return json_response({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> Response:
    """200 only when every configured model has a ready backend; else 503 with each state."""
    all_ready, models = gateway_state(request).registry.readiness()
    return json_response(
        {"status": "ready" if all_ready else "not_ready", "models": models},
        status_code=200 if all_ready else 503,
    )
