"""/v1/models: the configured models, with their readiness and image limits (our extension)."""

from fastapi import APIRouter, Request, Response

from vlm_gateway.core.errors import ModelNotFoundError
from vlm_gateway.core.protocol import Model, ModelList
from vlm_gateway.server.route_helpers import json_response
from vlm_gateway.server.state import GatewayState, gateway_state

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> Response:
    state = gateway_state(request)
    data = [_card(state, name) for name in state.registry.names()]
    return json_response(ModelList(data=data).model_dump(exclude_none=True))


@router.get("/v1/models/{model_id:path}", response_model=Model)
async def retrieve_model(model_id: str, request: Request) -> Response:
    state = gateway_state(request)
    if not state.registry.replicas(model_id):
        raise ModelNotFoundError(model_id, state.registry.names())
    return json_response(_card(state, model_id).model_dump(exclude_none=True))


def _card(state: GatewayState, name: str) -> Model:
    replicas = state.registry.replicas(name)
    limits = state.settings.image_limits(name)
    return Model(
        id=name,
        created=state.started_at,
        owned_by="vlm-gateway",
        vlm_gateway={
            "ready": any(b.status.ready for b in replicas),
            "replicas": [b.describe() for b in replicas],
            # Said up front: a request over these gets a 400.
            "images": limits.describe() if limits else None,
        },
    )
