"""A chat stream as the Responses API's event stream, in the order the SDK's stream helper
(`client.responses.stream`) accumulates: response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta ...,
response.output_text.done, response.content_part.done, response.output_item.done, then
response.completed (or response.incomplete when max_output_tokens cut it short). An error
after the stream began ends it with response.failed, whose `response.error` says why."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from vlm_gateway.core.errors import GatewayError
from vlm_gateway.core.responses_protocol import ResponseCreateRequest
from vlm_gateway.core.sse import named_frame
from vlm_gateway.server.chat_bridge import Chunks
from vlm_gateway.server.responses.answer import (
    incomplete_reason,
    message_item,
    new_ids,
    output_text_part,
    response_object,
    responses_usage,
)

log = logging.getLogger(__name__)


class _Events:
    """Numbers the events (`sequence_number`) and frames them."""

    def __init__(self, body: ResponseCreateRequest) -> None:
        self.body = body
        self.response_id, self.item_id = new_ids()
        self.created_at = time.time()
        self._sequence = 0

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return named_frame(kind, payload)

    def lifecycle(self, kind: str, status: str, **fields: Any) -> bytes:
        response = response_object(
            self.body, self.response_id, self.created_at, status=status, **fields
        )
        return self.event(kind, response=response)

    def on_text(self, kind: str, **fields: Any) -> bytes:
        return self.event(kind, item_id=self.item_id, output_index=0, content_index=0, **fields)


async def response_events(body: ResponseCreateRequest, chunks: Chunks) -> AsyncIterator[bytes]:
    events = _Events(body)
    yield events.lifecycle("response.created", "in_progress", output=[])
    yield events.lifecycle("response.in_progress", "in_progress", output=[])
    yield events.event(
        "response.output_item.added",
        output_index=0,
        item=message_item(events.item_id, None, "in_progress"),
    )
    yield events.on_text("response.content_part.added", part=output_text_part(""))
    texts: list[str] = []
    finish_reason: object = None
    usage: object = None
    try:
        async for chunk in chunks:
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    texts.append(delta)
                    yield events.on_text("response.output_text.delta", delta=delta, logprobs=[])
                finish_reason = choice.get("finish_reason") or finish_reason
    except GatewayError as exc:
        log.warning("responses stream for model %s failed: %s", body.model, exc.message)
        yield _failed(events, exc.message)
        return
    except Exception:
        log.exception("responses stream for model %s failed", body.model)
        yield _failed(events, "The stream failed inside the gateway.")
        return
    text = "".join(texts)
    reason = incomplete_reason(finish_reason)
    status = "incomplete" if reason else "completed"
    item = message_item(events.item_id, text, status)
    yield events.on_text("response.output_text.done", text=text, logprobs=[])
    yield events.on_text("response.content_part.done", part=output_text_part(text))
    yield events.event("response.output_item.done", output_index=0, item=item)
    yield events.lifecycle(
        f"response.{status}",
        status,
        output=[item],
        usage=responses_usage(usage),
        incomplete_reason=reason,
    )


def _failed(events: _Events, message: str) -> bytes:
    error = {"code": "server_error", "message": message}
    return events.lifecycle("response.failed", "failed", output=[], error=error)
