from fastapi import APIRouter, Request, Response

from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.server.route_helpers import call_tracked, parse_body, stream_tracked
from vlm_gateway.server.state import gateway_state

router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    state = gateway_state(request)
    await state.image_resolver.resolve(body)
    backend = state.registry.pick(body.model)
    if body.stream:
        return await stream_tracked(backend, backend.chat_stream(body))
    return await call_tracked(request, backend, backend.chat(body))
