from fastapi import APIRouter, Request, Response

from vlm_gateway.core.protocol import CompletionRequest
from vlm_gateway.server.door.keys import caller_of
from vlm_gateway.server.failover import call_with_failover, stream_with_failover
from vlm_gateway.server.model_access import require_model
from vlm_gateway.server.openapi import json_body, streamed_or_json
from vlm_gateway.server.route_helpers import parse_body
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
    require_model(caller_of(request.scope), state.registry, body.model)
    if body.stream:
        return await stream_with_failover(
            request,
            body.model,
            lambda backend, traced: traced.stream(backend.completions_stream(body)),
        )
    return await call_with_failover(
        request, body.model, lambda backend, traced: traced.call(backend.completions(body))
    )
