"""/v1/models: the configured models the caller may use, with their readiness, loading and image
limits (our extension); and the admin-only controls that load and unload an on-demand model
(backends/ondemand/)."""

from fastapi import APIRouter, Request, Response

from vlm_gateway.core.errors import PermissionDeniedError
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


@router.post("/v1/models/{model_id:path}/load", response_model=Model)
async def load_model(model_id: str, request: Request) -> Response:
    """Load an on-demand model now, as a request for it would (waits up to its load_timeout;
    409 for a model loaded at startup). Admin keys only."""
    state = _admin_state(request, model_id)
    await state.loader.load(model_id)
    return json_response(_card(state, model_id).model_dump(exclude_none=True))


@router.post("/v1/models/{model_id:path}/unload", response_model=Model)
async def unload_model(model_id: str, request: Request) -> Response:
    """Unload an on-demand model now (409 while it has requests in flight or is loading).
    Admin keys only."""
    state = _admin_state(request, model_id)
    await state.loader.unload(model_id)
    return json_response(_card(state, model_id).model_dump(exclude_none=True))


def _admin_state(request: Request, model_id: str) -> GatewayState:
    caller = caller_of(request.scope)
    if not caller.admin:
        raise PermissionDeniedError(
            "Loading and unloading models takes an API key with `admin: true` "
            "(security.keys, docs/security.md)."
        )
    state = gateway_state(request)
    require_model(caller, state.registry, model_id)
    return state


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
            # startup or on_demand, loaded / loading / sleeping / unloaded, last use.
            "loading": state.loader.describe(name),
            # An image part sent to a model without "image" is a 400 before any fetch.
            "input_modalities": list(state.settings.input_modalities(name)),
            # Said up front: a request over these gets a 400.
            "images": limits.describe() if limits else None,
        },
    )
