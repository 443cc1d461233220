"""A chat.completion as a Responses API `response` object (the SDK's `Response` type)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from vlm_gateway.core.responses_protocol import ResponseCreateRequest

# chat finish_reason -> the Responses API's incomplete reason (anything else: completed)
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_ids() -> tuple[str, str]:
    """(response id, message item id) for one answer."""
    return "resp_" + secrets.token_hex(24), "msg_" + secrets.token_hex(24)


def response_object(
    body: ResponseCreateRequest,
    response_id: str,
    created_at: float,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    incomplete_reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The response object in every state: in progress (streams), completed or incomplete."""
    finished = status in ("completed", "incomplete", "failed")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": time.time() if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "model": body.model,
        "output": output,
        "parallel_tool_calls": False,
        "previous_response_id": None,
        "store": False,  # nothing is kept: GET /v1/responses/{id} does not exist here
        "temperature": body.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "none",
        "tools": [],
        "top_p": body.top_p,
        "truncation": "disabled",
        "usage": usage if finished else None,
        "user": body.user,
    }


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [output_text_part(text)]
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def responses_usage(chat_usage: object) -> dict[str, Any] | None:
    if not isinstance(chat_usage, Mapping):
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    details = chat_usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached or 0), "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def incomplete_reason(finish_reason: object) -> str | None:
    return _INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None


def from_chat_completion(body: ResponseCreateRequest, completion: dict[str, Any]) -> dict[str, Any]:
    response_id, item_id = new_ids()
    choice = (completion.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    reason = incomplete_reason(choice.get("finish_reason"))
    status = "incomplete" if reason else "completed"
    return response_object(
        body,
        response_id,
        float(completion.get("created") or time.time()),
        status=status,
        output=[message_item(item_id, text, status)],
        usage=responses_usage(completion.get("usage")),
        incomplete_reason=reason,
    )
