"""A chat stream as Anthropic's event stream: message_start (the message, no content yet),
content_block_start, ping, content_block_delta (text_delta) ..., content_block_stop,
message_delta (stop_reason, stop_sequence, usage), message_stop. The input token count is
known only at the end, so message_start says 0 and message_delta carries the real one (the
SDK's accumulator takes it from there). An error after the stream began is Anthropic's
`event: error` with the error object, and the stream ends."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from vlm_gateway.core.anthropic_protocol import MessageCreateRequest
from vlm_gateway.core.errors import GatewayError, anthropic_error
from vlm_gateway.core.sse import named_frame
from vlm_gateway.server.anthropic.answer import (
    anthropic_usage,
    message_object,
    new_message_id,
    stop_of,
)
from vlm_gateway.server.chat_bridge import Chunks

log = logging.getLogger(__name__)


def _event(kind: str, **fields: Any) -> bytes:
    return named_frame(kind, {"type": kind, **fields})


async def message_events(body: MessageCreateRequest, chunks: Chunks) -> AsyncIterator[bytes]:
    empty_usage = {"input_tokens": 0, "output_tokens": 0}
    yield _event("message_start", message=message_object(body, new_message_id(), [], empty_usage))
    yield _event("content_block_start", index=0, content_block={"type": "text", "text": ""})
    yield _event("ping")
    last_choice: dict[str, Any] = {}
    usage: object = None
    try:
        async for chunk in chunks:
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    delta = {"type": "text_delta", "text": text}
                    yield _event("content_block_delta", index=0, delta=delta)
                if choice.get("finish_reason"):
                    last_choice = choice
    except GatewayError as exc:
        log.warning("messages stream for model %s failed: %s", body.model, exc.message)
        yield _error(exc)
        return
    except Exception:
        log.exception("messages stream for model %s failed", body.model)
        yield _error(GatewayError("The stream failed inside the gateway."))
        return
    stop_reason, stop_sequence = stop_of(body, last_choice)
    yield _event("content_block_stop", index=0)
    yield _event(
        "message_delta",
        delta={"stop_reason": stop_reason, "stop_sequence": stop_sequence},
        usage=anthropic_usage(usage),
    )
    yield _event("message_stop")


def _error(exc: GatewayError) -> bytes:
    _, body = anthropic_error(exc)
    return named_frame("error", body)
