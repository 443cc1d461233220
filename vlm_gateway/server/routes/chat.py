from fastapi import APIRouter, Request, Response

from vlm_gateway.core.chat_body import loads_chat_body
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.server.door.keys import caller_of
from vlm_gateway.server.failover import call_with_failover, stream_with_failover
from vlm_gateway.server.model_access import require_model
from vlm_gateway.server.openapi import json_body, streamed_or_json
from vlm_gateway.server.route_helpers import parse_body, resolve_images
from vlm_gateway.server.state import gateway_state

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    openapi_extra=json_body(ChatCompletionRequest)
    | streamed_or_json("A chat.completion object, or chat.completion.chunk events if streaming."),
)
async def create_chat_completion(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest, loads_chat_body)
    state = gateway_state(request)
    caller = caller_of(request.scope)
    # Before the images: a model the key may not use gets no fetch, and no limits said.
    require_model(caller, state.registry, body.model)
    state.tracer.annotate_request(body.model)
    await resolve_images(request, body)
    # Access was checked above; a replica that fails before answering is failed over.
    if body.stream:
        return await stream_with_failover(
            request, body.model, lambda backend, traced: traced.stream(backend.chat_stream(body))
        )
    return await call_with_failover(
        request, body.model, lambda backend, traced: traced.call(backend.chat(body))
    )
