"""/v1/models: the configured models the caller may use, with their readiness and image limits
(our extension)."""

from fastapi import APIRouter, Request, Response

from vlm_gateway.core.protocol import Model, ModelList
from vlm_gateway.server.door.keys import caller_of
from vlm_gateway.server.model_access import allowed_models, require_model
from vlm_gateway.server.route_helpers import json_response
from vlm_gateway.server.state import GatewayState, gateway_state

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> Response:
    state = gateway_state(request)
    names = allowed_models(caller_of(request.scope), state.registry)
    data = [_card(state, name) for name in names]
    return json_response(ModelList(data=data).model_dump(exclude_none=True))


@router.get("/v1/models/{model_id:path}", response_model=Model)
async def retrieve_model(model_id: str, request: Request) -> Response:
    state = gateway_state(request)
    require_model(caller_of(request.scope), state.registry, model_id)
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
            "replicas": [state.registry.describe(b) for b in replicas],
            # An image part sent to a model without "image" is a 400 before any fetch.
            "input_modalities": list(state.settings.input_modalities(name)),
            # Said up front: a request over these gets a 400.
            "images": limits.describe() if limits else None,
        },
    )
