"""What a chat request means to a transformers model: the conversation in the processor's
chat-template shape, its sampling options, and the 400s for what this kind cannot honour.
Pure Python (Pillow lazily, for decoding in a worker thread).

Messages map one to one: system and developer messages become `system` turns (the configured
`system_prompt` is put first when the request has none), user and assistant turns keep their
text and image parts in order, images as `{"type": "image", "image": <PIL image>}`."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vlm_gateway.backends.inprocess.request import check_supported, decode_image, unsupported
from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.protocol import (
    ChatCompletionContentPartImage,
    ChatCompletionContentPartText,
    ChatCompletionRequest,
    ContentPart,
)

KIND = "transformers"
# Non-OpenAI fields this kind honours (vLLM's names).
EXTRAS = frozenset({"top_k", "repetition_penalty"})

Conversation = list[dict[str, Any]]


@dataclass(frozen=True)
class ImageRef:
    url: str
    param: str  # where the image sits, for error messages


@dataclass(frozen=True)
class Sampling:
    """One choice's sampling as the request said it (None: the model's defaults decide)."""

    do_sample: bool | None  # None: the model's generation_config decides
    temperature: float | None
    top_p: float | None
    top_k: int | None
    repetition_penalty: float | None
    seed: int | None  # only sampled rows use it


def check(request: ChatCompletionRequest) -> None:
    """400 for every field this kind cannot honour, naming it."""
    check_supported(request, KIND, EXTRAS)
    if request.logit_bias:
        unsupported(KIND, "logit_bias", "it does not bias logits yet")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            unsupported(KIND, name, "transformers has repetition_penalty instead")
    if request.continue_final_message:
        unsupported(KIND, "continue_final_message", "it does not continue messages yet")


def conversation(
    request: ChatCompletionRequest, system_prompt: str | None
) -> tuple[Conversation, list[ImageRef]]:
    """The messages as the processor's chat template takes them; images as `ImageRef`s in the
    image parts until `with_images` puts the decoded images there."""
    turns: Conversation = []
    images: list[ImageRef] = []
    for index, message in enumerate(request.messages):
        role = "system" if message.role in ("system", "developer") else message.role
        if role not in ("system", "user", "assistant"):
            raise InvalidRequestError(
                f"The {KIND} backend does not support tools; {message.role} messages are not "
                "accepted.",
                param=f"messages[{index}].role",
            )
        turns.append({"role": role, "content": _content(message.content, index, images)})
    if system_prompt and not any(turn["role"] == "system" for turn in turns):
        turns.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    if not turns or turns[-1]["role"] != "user":
        raise InvalidRequestError("The last message must be a user message.", param="messages")
    return turns, images


def _content(
    content: str | Sequence[ContentPart] | None, index: int, images: list[ImageRef]
) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts: list[dict[str, Any]] = []
    for part_index, part in enumerate(content):
        if isinstance(part, ChatCompletionContentPartImage):
            ref = ImageRef(part.image_url.url, f"messages[{index}].content[{part_index}]")
            images.append(ref)
            parts.append({"type": "image", "image": ref})
        elif isinstance(part, ChatCompletionContentPartText):
            parts.append({"type": "text", "text": part.text})
        else:  # the resolver refuses these first (this kind takes text and images only)
            raise InvalidRequestError(
                f"The {KIND} backend does not take {part.type} parts.",
                param=f"messages[{index}].content[{part_index}]",
                code=f"{part.type}_input_not_supported",
            )
    return parts


def with_images(turns: Conversation) -> Conversation:
    """Blocking: the conversation with every `ImageRef` decoded to an RGB PIL image."""
    return [{**turn, "content": [_decoded(part) for part in turn["content"]]} for turn in turns]


def _decoded(part: dict[str, Any]) -> dict[str, Any]:
    ref = part.get("image")
    if not isinstance(ref, ImageRef):
        return part
    return {"type": "image", "image": decode_image(ref.url, ref.param + ".image_url.url", KIND)}


def sampling(request: ChatCompletionRequest) -> list[Sampling]:
    """One per choice. Unset temperature: the model's generation_config; 0: greedy."""
    n = request.n or 1
    extra = request.model_extra or {}
    top_k = _number(extra, "top_k", int)
    repetition = _number(extra, "repetition_penalty", float)
    if request.temperature == 0:
        return [Sampling(False, None, None, None, repetition, None)] * n
    do_sample = None if request.temperature is None else True
    base = request.seed if request.seed is not None else None
    if do_sample and base is None:
        base = secrets.randbits(48)
    return [
        Sampling(
            do_sample,
            request.temperature,
            request.top_p,
            top_k,
            repetition,
            None if base is None else (base + i) % 2**63,
        )
        for i in range(n)
    ]


def _number(extra: dict[str, Any], name: str, kind: type[int] | type[float]) -> Any:
    value = extra.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidRequestError(f"'{name}' must be a non-negative number.", param=name)
    return kind(value)


def stops(request: ChatCompletionRequest) -> tuple[str, ...]:
    values = request.stop if isinstance(request.stop, list) else [request.stop or ""]
    return tuple(s for s in values if s)
