"""An Anthropic Messages request as a chat request (docs/api.md has the field table).

`system` becomes a leading system message, text blocks chat text parts, image blocks chat
image_url parts (a base64 source as a data: URL, a url source as it is), `max_tokens` the chat
`max_completion_tokens`, `stop_sequences` `stop`, `metadata.user_id` `user`; `top_k` travels as
the chat extra of that name (vLLM honours it; a backend that cannot answers 400 naming it).
Tools, extended thinking and the other features the gateway cannot honour are a 400 naming
the field.
"""

from __future__ import annotations

from typing import Any

from vlm_gateway.core.anthropic_protocol import (
    ImageBlock,
    ImageSource,
    MessageCreateRequest,
    MessageParam,
)
from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.server.chat_bridge import Translated

MAX_STOP_SEQUENCES = 4  # what the chat call (and so every backend) takes

_UNSUPPORTED = {
    "tools": "Tools are not supported by this gateway.",
    "tool_choice": "Tools are not supported by this gateway.",
    "container": "Containers are not supported by this gateway.",
    "mcp_servers": "MCP servers are not supported by this gateway.",
    "context_management": "Context management is not supported by this gateway.",
    "output_config": "Output configuration is not supported by this gateway.",
}


def to_chat(body: MessageCreateRequest) -> Translated:
    refuse_unsupported(body)
    messages: list[dict[str, Any]] = []
    system = _system_text(body.system)
    if system:
        messages.append({"role": "system", "content": system})
    renames = {"messages": "messages"}
    for k, message in enumerate(body.messages):
        chat_index = len(messages)
        messages.append(_message(message, k))
        for j, block in enumerate(message.content if isinstance(message.content, list) else []):
            if isinstance(block, ImageBlock):
                source_field = "data" if block.source.type == "base64" else "url"
                renames[f"messages[{chat_index}].content[{j}].image_url.url"] = (
                    f"messages[{k}].content[{j}].source.{source_field}"
                )
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "max_completion_tokens": body.max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "stop": body.stop_sequences or None,
        "stream": body.stream,
        "user": body.metadata.user_id if body.metadata else None,
    }
    chat = ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    return Translated(chat, renames)


def refuse_unsupported(body: MessageCreateRequest) -> None:
    for name, why in _UNSUPPORTED.items():
        if getattr(body, name):
            raise InvalidRequestError(why, param=name)
    if body.thinking and body.thinking.get("type") != "disabled":
        raise InvalidRequestError(
            "Extended thinking is not supported by this gateway.", param="thinking"
        )
    if body.stop_sequences and len(body.stop_sequences) > MAX_STOP_SEQUENCES:
        raise InvalidRequestError(
            f"At most {MAX_STOP_SEQUENCES} stop sequences are supported by this gateway; "
            f"this request has {len(body.stop_sequences)}.",
            param="stop_sequences",
        )


def _system_text(system: object) -> str:
    if isinstance(system, list):
        return "\n\n".join(block.text for block in system)
    return system if isinstance(system, str) else ""


def _message(message: MessageParam, k: int) -> dict[str, Any]:
    if isinstance(message.content, str):
        return {"role": message.role, "content": message.content}
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(message.content):
        where = f"messages[{k}].content[{j}]"
        if isinstance(block, ImageBlock):
            if message.role != "user":
                raise InvalidRequestError(
                    "Image blocks are accepted in user messages only.", param=where
                )
            url = _source_url(block.source, f"{where}.source")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            parts.append({"type": "text", "text": block.text})
    return {"role": message.role, "content": parts}


def _source_url(source: ImageSource, where: str) -> str:
    """A base64 source as a data: URL (the resolver checks it like any other), a url source
    as it is (the resolver fetches it behind the same SSRF guard)."""
    if source.type == "url":
        if not source.url:
            raise InvalidRequestError("Missing required parameter: 'url'.", param=f"{where}.url")
        return source.url
    for name in ("media_type", "data"):
        if not getattr(source, name):
            raise InvalidRequestError(
                f"Missing required parameter: '{name}'.", param=f"{where}.{name}"
            )
    return f"data:{source.media_type};base64,{source.data}"
