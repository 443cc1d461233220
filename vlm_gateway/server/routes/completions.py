from fastapi import APIRouter, Request, Response

from vlm_gateway.core.protocol import CompletionRequest
from vlm_gateway.server.door.keys import caller_of
from vlm_gateway.server.model_access import pick_backend
from vlm_gateway.server.openapi import json_body, streamed_or_json
from vlm_gateway.server.route_helpers import call_tracked, parse_body, stream_tracked
from vlm_gateway.server.state import gateway_state

router = APIRouter()


@router.post(
    "/v1/completions",
    openapi_extra=json_body(CompletionRequest)
    | streamed_or_json("A text_completion object, or its chunks as events if streaming."),
)
async def create_completion(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    state = gateway_state(request)
    state.tracer.annotate_request(body.model)
    backend = pick_backend(caller_of(request.scope), state.registry, body.model)
    traced = state.tracer.backend_call(backend, state.registry)
    if body.stream:
        return await stream_tracked(
            request, backend, traced.stream(backend.completions_stream(body))
        )
    return await call_tracked(request, backend, traced.call(backend.completions(body)))
