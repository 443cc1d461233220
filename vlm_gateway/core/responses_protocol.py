"""OpenAI Responses API request models (POST /v1/responses).

Names mirror the official SDK's `ResponseCreateParams` and input item params. Unlike the chat
models, unknown fields are refused (`extra="forbid"`): the gateway translates this API onto a
chat call, so a field it does not model would be silently lost. Fields it models but cannot
honour (tools, reasoning, ...) are typed loosely here and refused with a 400 naming them by the
translation (vlm_gateway/server/responses/translate.py). No torch, no FastAPI here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Strict):
    type: Literal["input_text"]
    text: str


class InputImage(_Strict):
    type: Literal["input_image"]
    detail: Literal["auto", "low", "high"] = "auto"
    image_url: str | None = None
    file_id: str | None = None  # refused: the gateway keeps no files for images


class InputFile(_Strict):
    """A file by its bytes (`file_data`, a data: URL): video/* and audio/* become the chat
    API's video and audio parts (media/parts.py); other files, `file_id` and `file_url` are
    refused."""

    type: Literal["input_file"]
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None


class OutputText(BaseModel):
    """An earlier answer sent back as input (a multi-turn conversation kept by the client);
    its annotations and logprobs are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    type: Literal["output_text"]
    text: str


InputContentPart = Annotated[
    InputText | InputImage | InputFile | OutputText, Field(discriminator="type")
]


class InputMessage(_Strict):
    """An input item of type "message" (the type may be left out, as the SDK allows)."""

    role: Literal["user", "assistant", "system", "developer"]
    content: list[InputContentPart] | str
    type: Literal["message"] = "message"
    # Sent back with earlier output items; meaningless to the model.
    id: str | None = None
    status: str | None = None
    phase: str | None = None


class TextFormat(_Strict):
    type: str


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponseCreateRequest(_Strict):
    """POST /v1/responses. Supported, translated or refused field by field: docs/api.md."""

    model: Annotated[str, Field(min_length=1)]
    # The list first: a bad item is then reported at its own field, not as "not a string".
    input: Annotated[list[InputMessage], Field(min_length=1)] | str
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    text: TextConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    parallel_tool_calls: bool | None = None
    # Refused when set (translate.py says why): the gateway has no tools, reasoning, storage.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_tool_calls: int | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    top_logprobs: int | None = None
    context_management: list[dict[str, Any]] | None = None
