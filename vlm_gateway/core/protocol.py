"""OpenAI Chat Completions protocol models.

Names and field order mirror OpenAI's API (the official SDK's `CompletionCreateParams`,
`ChatCompletion` and `ChatCompletionChunk`). Requests accept fields we do not model
(`extra="allow"`): upstreams such as vLLM understand top_k, min_p, repetition_penalty, ...
and get them forwarded untouched. Our own extensions live in the fenced block at the end.

No torch, no FastAPI here: backends and the app both import this module.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

# ---------------------------------------------------------------------------------------------
# Request: content parts and messages
# ---------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ChatCompletionContentPartText(_Strict):
    type: Literal["text"]
    text: str


class _Digested(_Strict):
    """An image, video or audio part: the resolver notes a digest of it as forwarded
    (images/resolve.py, media/resolve.py), for affinity routing and vLLM's part ids."""

    _digest: str | None = PrivateAttr(default=None)

    @property
    def digest(self) -> str | None:
        return self._digest

    def set_digest(self, digest: str) -> None:
        self._digest = digest


class ChatCompletionContentPartImage(_Digested):
    type: Literal["image_url"]
    image_url: ImageURL
    # vLLM's extension: a stable id of the image, its processor and encoder caches' key.
    uuid: str | None = None


class VideoURL(_Strict):
    url: str


class ChatCompletionContentPartVideo(_Digested):
    # vLLM's part (OpenAI's API has no video part): a data:, http(s) or file: URL.
    type: Literal["video_url"]
    video_url: VideoURL
    uuid: str | None = None  # vLLM's extension, as on image parts


class InputAudio(_Strict):
    data: str  # base64, no data: prefix
    format: str  # OpenAI takes "wav" and "mp3"; vLLM any container its decoder reads


class ChatCompletionContentPartInputAudio(_Digested):
    type: Literal["input_audio"]
    input_audio: InputAudio
    uuid: str | None = None  # vLLM's extension, as on image parts


class AudioURL(_Strict):
    url: str


class ChatCompletionContentPartAudio(_Digested):
    # vLLM's part: audio by URL, like `video_url`.
    type: Literal["audio_url"]
    audio_url: AudioURL
    uuid: str | None = None  # vLLM's extension, as on image parts


class FileFile(_Strict):
    file_data: str | None = None  # a data: URL
    file_id: str | None = None
    filename: str | None = None


class ChatCompletionContentPartFile(_Strict):
    """OpenAI's file part. The gateway takes video/* and audio/* data and hands it on as a
    `video_url` or `audio_url` part (media/resolve.py); any other file is a 400."""

    type: Literal["file"]
    file: FileFile


MediaPart = (
    ChatCompletionContentPartVideo
    | ChatCompletionContentPartInputAudio
    | ChatCompletionContentPartAudio
)
ContentPart = Annotated[
    ChatCompletionContentPartText
    | ChatCompletionContentPartImage
    | ChatCompletionContentPartVideo
    | ChatCompletionContentPartInputAudio
    | ChatCompletionContentPartAudio
    | ChatCompletionContentPartFile,
    Field(discriminator="type"),
]
TextPart = ChatCompletionContentPartText


class _Message(BaseModel):
    # Messages may carry fields newer than this module (OpenAI adds them often): keep them.
    model_config = ConfigDict(extra="allow")


class ChatCompletionSystemMessageParam(_Message):
    content: str | list[TextPart]
    role: Literal["system"]
    name: str | None = None


class ChatCompletionDeveloperMessageParam(_Message):
    content: str | list[TextPart]
    role: Literal["developer"]
    name: str | None = None


class ChatCompletionUserMessageParam(_Message):
    content: str | list[ContentPart]
    role: Literal["user"]
    name: str | None = None


class ChatCompletionAssistantMessageParam(_Message):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatCompletionToolMessageParam(_Message):
    content: str | list[TextPart]
    role: Literal["tool"]
    tool_call_id: str


ChatCompletionMessageParam = Annotated[
    ChatCompletionSystemMessageParam
    | ChatCompletionDeveloperMessageParam
    | ChatCompletionUserMessageParam
    | ChatCompletionAssistantMessageParam
    | ChatCompletionToolMessageParam,
    Field(discriminator="role"),
]


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


# ---------------------------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------------------------


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Unknown fields are kept in `model_extra` and forwarded."""

    model_config = ConfigDict(extra="allow")

    messages: Annotated[list[ChatCompletionMessageParam], Field(min_length=1)]
    model: Annotated[str, Field(min_length=1)]
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: dict[str, int] | None = None
    logprobs: bool | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    metadata: dict[str, str] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    parallel_tool_calls: bool | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    user: str | None = None

    @property
    def wants_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def output_token_limit(self) -> int | None:
        """max_completion_tokens wins over the deprecated max_tokens, as in OpenAI's API."""
        return self.max_completion_tokens or self.max_tokens

    # --- vlm-gateway extensions (not in OpenAI's API; SDK clients send them in extra_body) ---
    # Prompted captioning: the last message is an assistant message whose text the model
    # continues ("a photo of" -> " a cat on a sofa"). Same name and meaning as vLLM's extra
    # parameter, so upstreams that are vLLM get it forwarded and honour it too.
    continue_final_message: bool | None = None


class CompletionRequest(BaseModel):
    """POST /v1/completions (legacy). Only what routing needs is modelled; the rest forwards."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: bool | None = None


# ---------------------------------------------------------------------------------------------
# Responses built by the gateway itself (chat replies are built by backends or passed through)
# ---------------------------------------------------------------------------------------------


class Model(BaseModel):
    id: str
    created: int
    object: Literal["model"] = "model"
    owned_by: str
    # --- vlm-gateway extension (not in OpenAI's API) -------------------------------------------
    vlm_gateway: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
