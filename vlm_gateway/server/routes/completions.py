from fastapi import APIRouter, Request, Response

from vlm_gateway.core.protocol import CompletionRequest
from vlm_gateway.server.openapi import json_body, streamed_or_json
from vlm_gateway.server.route_helpers import parse_body
from vlm_gateway.server.serving import ModelRequest

router = APIRouter()


@router.post(
    "/v1/completions",
    openapi_extra=json_body(CompletionRequest)
    | streamed_or_json("A text_completion object, or its chunks as events if streaming."),
)
async def create_completion(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    served = ModelRequest(request, body.model)
    served.admit()
    if body.stream:
        return await served.stream(lambda backend: backend.completions_stream(body))
    return await served.answer(lambda backend: backend.completions(body))
