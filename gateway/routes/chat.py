from fastapi import APIRouter, Request, Response

from gateway.http import call_tracked, parse_body, stream_tracked
from gateway.protocol import ChatCompletionRequest

router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    await request.app.state.image_resolver.resolve(body)
    backend = request.app.state.registry.pick(body.model)
    if body.stream:
        return await stream_tracked(backend, backend.chat_stream(body))
    return await call_tracked(request, backend, backend.chat(body))
