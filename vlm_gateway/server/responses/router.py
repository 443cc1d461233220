"""POST /v1/responses: parse, translate onto the backend's chat call, answer in kind."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from vlm_gateway.core.responses_protocol import ResponseCreateRequest
from vlm_gateway.server.chat_bridge import serve_translated
from vlm_gateway.server.openapi import json_body, streamed_or_json
from vlm_gateway.server.responses.answer import from_chat_completion
from vlm_gateway.server.responses.events import response_events
from vlm_gateway.server.responses.translate import to_chat
from vlm_gateway.server.route_helpers import parse_body

router = APIRouter()


@router.post(
    "/v1/responses",
    openapi_extra=json_body(ResponseCreateRequest)
    | streamed_or_json("A response object, or response.* events if streaming."),
)
async def create_response(request: Request) -> Response:
    body = await parse_body(request, ResponseCreateRequest)
    return await serve_translated(
        request,
        to_chat(body),
        lambda completion: from_chat_completion(body, completion),
        lambda chunks: response_events(body, chunks),
    )
