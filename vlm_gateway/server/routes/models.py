from fastapi import APIRouter, Request, Response

from vlm_gateway.core.errors import ModelNotFoundError
from vlm_gateway.server.route_helpers import json_response
from vlm_gateway.images.resolve import limits_for
from vlm_gateway.core.protocol import Model, ModelList

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    registry = request.app.state.registry
    data = [_card(request, name) for name in registry.names()]
    return json_response(ModelList(data=data).model_dump(exclude_none=True))


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    registry = request.app.state.registry
    if not registry.replicas(model_id):
        raise ModelNotFoundError(model_id, registry.names())
    return json_response(_card(request, model_id).model_dump(exclude_none=True))


def _card(request: Request, name: str) -> Model:
    replicas = request.app.state.registry.replicas(name)
    settings = request.app.state.settings
    entries = settings.entries_for(name)
    return Model(
        id=name,
        created=request.app.state.started_at,
        owned_by="vlm-gateway",
        vlm_gateway={
            "ready": any(b.status.ready for b in replicas),
            "replicas": [b.describe() for b in replicas],
            # Said up front: a request over these gets a 400.
            "images": limits_for(settings.images, entries[0]).describe() if entries else None,
        },
    )
