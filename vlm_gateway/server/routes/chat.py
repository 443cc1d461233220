from fastapi import APIRouter, Request, Response

from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.server.door.keys import caller_of
from vlm_gateway.server.model_access import require_model
from vlm_gateway.server.openapi import json_body, streamed_or_json
from vlm_gateway.server.route_helpers import (
    call_tracked,
    parse_body,
    resolve_images,
    stream_tracked,
)
from vlm_gateway.server.state import gateway_state

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    openapi_extra=json_body(ChatCompletionRequest)
    | streamed_or_json("A chat.completion object, or chat.completion.chunk events if streaming."),
)
async def create_chat_completion(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    state = gateway_state(request)
    caller = caller_of(request.scope)
    # Before the images: a model the key may not use gets no fetch, and no limits said.
    require_model(caller, state.registry, body.model)
    state.tracer.annotate_request(body.model)
    await resolve_images(request, body)
    backend = state.registry.pick(body.model)  # access was checked above
    traced = state.tracer.backend_call(backend, state.registry)
    if body.stream:
        return await stream_tracked(request, backend, traced.stream(backend.chat_stream(body)))
    return await call_tracked(request, backend, traced.call(backend.chat(body)))
