"""Stable media ids for vLLM: each image, video and audio part of a forwarded chat request gets
the resolver's digest of its bytes (images/resolve.py, media/resolve.py) as its `uuid`, vLLM's
per-part extension that becomes the request's `multi_modal_uuids`. vLLM then keys its processor
and encoder caches, and the image's blocks in its prefix cache, by that id instead of hashing
the image again.

Only for upstreams that are vLLM (managed `backend: vllm`, or `backend: openai` with
`image_uuids: true`): other OpenAI-compatible servers may refuse a field they do not know.
A `uuid` the client sent itself is forwarded as it is, never replaced."""

from __future__ import annotations

from typing import Any

from vlm_gateway.core.protocol import (
    ChatCompletionContentPartAudio,
    ChatCompletionContentPartImage,
    ChatCompletionContentPartInputAudio,
    ChatCompletionContentPartVideo,
    ChatCompletionRequest,
)

_DIGESTED = (
    ChatCompletionContentPartImage,
    ChatCompletionContentPartVideo,
    ChatCompletionContentPartAudio,
    ChatCompletionContentPartInputAudio,
)


def add_image_uuids(payload: dict[str, Any], request: ChatCompletionRequest) -> None:
    """Set `uuid` on the image, video and audio parts of `payload` (the dump of `request`)
    that have none."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return
    for sent, message in zip(messages, request.messages, strict=False):
        content = getattr(message, "content", None)
        if not isinstance(content, list) or not isinstance(sent, dict):
            continue
        sent_parts = sent.get("content")
        if not isinstance(sent_parts, list):
            continue
        for sent_part, part in zip(sent_parts, content, strict=False):
            if (
                isinstance(part, _DIGESTED)
                and part.digest is not None
                and isinstance(sent_part, dict)
                and sent_part.get("uuid") is None
            ):
                sent_part["uuid"] = part.digest
