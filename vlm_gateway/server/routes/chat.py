from fastapi import APIRouter, Request, Response

from vlm_gateway.core.chat_body import loads_chat_body
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.server.openapi import json_body, streamed_or_json
from vlm_gateway.server.route_helpers import parse_body
from vlm_gateway.server.serving import ModelRequest

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    openapi_extra=json_body(ChatCompletionRequest)
    | streamed_or_json("A chat.completion object, or chat.completion.chunk events if streaming."),
)
async def create_chat_completion(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest, loads_chat_body)
    served = ModelRequest(request, body.model)
    served.admit()  # before the images: a model the key may not use gets no fetch
    await served.resolve_images(body)
    if body.stream:
        return await served.stream(lambda backend: backend.chat_stream(body))
    return await served.answer(lambda backend: backend.chat(body))
