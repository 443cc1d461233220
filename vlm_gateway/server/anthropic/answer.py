"""A chat.completion as an Anthropic `message` object (the SDK's `Message` type)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from vlm_gateway.core.anthropic_protocol import MessageCreateRequest


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def stop_of(body: MessageCreateRequest, choice: Mapping[str, Any]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) from a chat choice's finish_reason. vLLM names the stop
    string that matched in the choice's `stop_reason`; without it a stop is `end_turn`."""
    finish = choice.get("finish_reason")
    if finish == "length":
        return "max_tokens", None
    if finish == "content_filter":
        return "refusal", None
    matched = choice.get("stop_reason")
    if isinstance(matched, str) and matched in (body.stop_sequences or ()):
        return "stop_sequence", matched
    return "end_turn", None


def anthropic_usage(chat_usage: object) -> dict[str, int]:
    if not isinstance(chat_usage, Mapping):
        return {"input_tokens": 0, "output_tokens": 0}
    return {
        "input_tokens": int(chat_usage.get("prompt_tokens") or 0),
        "output_tokens": int(chat_usage.get("completion_tokens") or 0),
    }


def message_object(
    body: MessageCreateRequest,
    message_id: str,
    content: list[dict[str, Any]],
    usage: dict[str, int],
    stop: tuple[str | None, str | None] = (None, None),
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": body.model,
        "content": content,
        "stop_reason": stop[0],
        "stop_sequence": stop[1],
        "usage": usage,
    }


def from_chat_completion(body: MessageCreateRequest, completion: dict[str, Any]) -> dict[str, Any]:
    choice = (completion.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    return message_object(
        body,
        new_message_id(),
        [{"type": "text", "text": text}],
        anthropic_usage(completion.get("usage")),
        stop_of(body, choice),
    )
