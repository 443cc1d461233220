"""POST /v1/messages: parse, translate onto the backend's chat call, answer in kind. Errors on
this route are Anthropic's shape (vlm_gateway/server/error_shapes.py); `anthropic-version` is
accepted and ignored (there is one version of this surface)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from vlm_gateway.core.anthropic_protocol import MessageCreateRequest
from vlm_gateway.server.anthropic.answer import from_chat_completion
from vlm_gateway.server.anthropic.events import message_events
from vlm_gateway.server.anthropic.translate import to_chat
from vlm_gateway.server.chat_bridge import serve_translated
from vlm_gateway.server.openapi import json_body, streamed_or_json
from vlm_gateway.server.route_helpers import parse_body

router = APIRouter()


@router.post(
    "/v1/messages",
    openapi_extra=json_body(MessageCreateRequest)
    | streamed_or_json("A message object, or Anthropic's message events if streaming."),
)
async def create_message(request: Request) -> Response:
    body = await parse_body(request, MessageCreateRequest)
    return await serve_translated(
        request,
        to_chat(body),
        lambda completion: from_chat_completion(body, completion),
        lambda chunks: message_events(body, chunks),
    )
