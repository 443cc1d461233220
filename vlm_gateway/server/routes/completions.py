from fastapi import APIRouter, Request, Response

from vlm_gateway.core.protocol import CompletionRequest
from vlm_gateway.server.route_helpers import call_tracked, parse_body, stream_tracked
from vlm_gateway.server.state import gateway_state

router = APIRouter()


@router.post("/v1/completions")
async def create_completion(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    backend = gateway_state(request).registry.pick(body.model)
    if body.stream:
        return await stream_tracked(backend, backend.completions_stream(body))
    return await call_tracked(request, backend, backend.completions(body))
