"""Anthropic Messages API request models (POST /v1/messages).

Names mirror the official `anthropic` SDK's `MessageCreateParams` and block params. Unknown
fields are refused (`extra="forbid"`), as Anthropic's API does: the gateway translates this API
onto a chat call and would otherwise lose them silently. Fields it models but cannot honour
(tools, thinking, ...) are typed loosely and refused with a 400 naming them by the translation
(vlm_gateway/server/anthropic/translate.py). No torch, no FastAPI here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CacheControl(_Strict):
    """Accepted and ignored: the gateway keeps no prompt cache a client could address."""

    type: Literal["ephemeral"]
    ttl: str | None = None


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class ImageSource(_Strict):
    """`{"type": "base64", "media_type", "data"}` or `{"type": "url", "url"}`. One model, not a
    tagged union, so a validation error's location stays a plain field path; the translation
    checks that the fields of the chosen type are present."""

    type: Literal["base64", "url"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"] | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(_Strict):
    type: Literal["image"]
    source: ImageSource
    cache_control: CacheControl | None = None


ContentBlock = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class MessageParam(_Strict):
    role: Literal["user", "assistant"]
    content: list[ContentBlock] | str  # the list first: errors name the bad block


class Metadata(_Strict):
    user_id: str | None = None


class MessageCreateRequest(_Strict):
    """POST /v1/messages. Supported, translated or refused field by field: docs/api.md."""

    model: Annotated[str, Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)]
    messages: Annotated[list[MessageParam], Field(min_length=1)]
    system: list[TextBlock] | str | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    metadata: Metadata | None = None
    service_tier: str | None = None
    # Refused when set (translate.py says why).
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    container: str | dict[str, Any] | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    context_management: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
