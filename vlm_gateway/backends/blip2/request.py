"""What a chat request means to BLIP-2: the prompt text, the one image, the sampling options,
and the 400s for what BLIP-2 cannot do. Pure Python (Pillow only, lazily, for decoding).

Prompt mapping (the README's "In-process BLIP-2" section shows examples):
- a user turn with the image and no text  -> plain captioning: "" (BOS only)
- a user turn with text                   -> "Question: {text} Answer:"
- earlier turns                           -> "Question: q1 Answer: a1 Question: q2 Answer:"
  (an earlier textless turn contributes its answer alone: it was a caption)
- `continue_final_message: true` and a last assistant message -> its text is a prefix the model
  continues (prompted captioning), e.g. "a photo of"; same field and meaning as in vLLM.
System and developer messages are ignored (BLIP-2 was not trained with instructions); the
backend logs a note.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vlm_gateway.backends.inprocess import request as inprocess_request
from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.protocol import (
    ChatCompletionContentPartImage,
    ChatCompletionContentPartText,
    ChatCompletionRequest,
    ContentPart,
)

if TYPE_CHECKING:
    from PIL import Image

# A message's content: text, or parts (only user messages carry image parts), or none.
_Content = str | Sequence[ContentPart] | None


@dataclass(frozen=True)
class Blip2Prompt:
    text: str  # what follows the image; "" is plain captioning
    image_url: str
    image_param: str  # where the image sits, for error messages
    continues_text: bool  # prompted captioning: the answer continues `text` verbatim
    ignored_system: bool


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None  # None: the backend's default, capped by the context
    temperature: float
    top_p: float
    n: int
    seeds: tuple[int, ...]  # one per choice
    stop: tuple[str, ...]
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[int, float]


def build_prompt(request: ChatCompletionRequest) -> Blip2Prompt:
    turns, images, ignored_system = _turns_and_images(request)
    if len(images) != 1:
        raise InvalidRequestError(
            f"BLIP-2 takes exactly one image per conversation; this request has {len(images)}. "
            "Send one image_url part (a data: URL) in a user message.",
            param="messages",
        )
    prefix = None
    if request.continue_final_message:
        if not turns or turns[-1][0] != "assistant":
            raise InvalidRequestError(
                "continue_final_message needs the last message to be an assistant message "
                "holding the text to continue.",
                param="continue_final_message",
            )
        prefix = turns.pop()[1]
    if not turns or turns[-1][0] != "user":
        raise InvalidRequestError(
            "The last message must be a user message (or set continue_final_message to "
            "continue a final assistant message).",
            param="messages",
        )
    text = _render(turns, prefix)
    url, param = images[0]
    return Blip2Prompt(text, url, param, prefix is not None, ignored_system)


def _turns_and_images(
    request: ChatCompletionRequest,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], bool]:
    """Consecutive messages of one role are one turn; texts are joined with a space."""
    turns: list[list[str]] = []  # [role, text]
    images: list[tuple[str, str]] = []
    ignored_system = False
    for index, message in enumerate(request.messages):
        if message.role in ("system", "developer"):
            ignored_system = True
            continue
        if message.role == "tool":
            raise InvalidRequestError(
                "The blip2 backend does not support tools; tool messages are not accepted.",
                param=f"messages[{index}].role",
            )
        text = _message_text(message.content, index, images)
        if turns and turns[-1][0] == message.role:
            turns[-1][1] = " ".join(t for t in (turns[-1][1], text) if t)
        else:
            turns.append([message.role, text])
    return [(role, text) for role, text in turns], images, ignored_system


def _message_text(content: _Content, index: int, images: list[tuple[str, str]]) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content.strip()
    texts = []
    for part_index, part in enumerate(content):
        if isinstance(part, ChatCompletionContentPartImage):
            param = f"messages[{index}].content[{part_index}].image_url.url"
            images.append((part.image_url.url, param))
        elif isinstance(part, ChatCompletionContentPartText):
            texts.append(part.text.strip())
        else:  # the resolver refuses these first (BLIP-2 takes text and images only)
            raise InvalidRequestError(
                f"The blip2 backend does not take {part.type} parts.",
                param=f"messages[{index}].content[{part_index}]",
                code=f"{part.type}_input_not_supported",
            )
    return " ".join(t for t in texts if t)


def _render(turns: list[tuple[str, str]], prefix: str | None) -> str:
    pieces: list[str] = []
    pending_question: str | None = None
    for role, text in turns:
        if role == "user":
            pending_question = text
            continue
        if pending_question is None:
            raise InvalidRequestError(
                "An assistant message must follow a user message.", param="messages"
            )
        pieces.append(f"Question: {pending_question} Answer: {text}" if pending_question else text)
        pending_question = None
    if pending_question:
        pieces.append(f"Question: {pending_question} Answer:")
    if prefix:
        pieces.append(prefix)
    return " ".join(p.strip() for p in pieces if p.strip())


def check_supported(request: ChatCompletionRequest) -> None:
    """400 for every field BLIP-2 cannot honour, naming it."""
    inprocess_request.check_supported(request, "blip2")


def sampling_options(request: ChatCompletionRequest, vocab_size: int) -> Sampling:
    n = request.n or 1
    base_seed = request.seed if request.seed is not None else secrets.randbits(48)
    stops = request.stop if isinstance(request.stop, list) else [request.stop or ""]
    return Sampling(
        max_tokens=request.output_token_limit,
        # Greedy unless asked: BLIP-2 captions are expected to be deterministic.
        temperature=request.temperature if request.temperature is not None else 0.0,
        top_p=request.top_p if request.top_p is not None else 1.0,
        n=n,
        seeds=tuple((base_seed + i) % 2**63 for i in range(n)),
        stop=tuple(s for s in stops if s),
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        logit_bias=_logit_bias(request.logit_bias, vocab_size),
    )


def _logit_bias(bias: dict[str, int] | None, vocab_size: int) -> dict[int, float]:
    result = {}
    for key, value in (bias or {}).items():
        if not key.isdigit() or int(key) >= vocab_size or not -100 <= value <= 100:
            raise InvalidRequestError(
                f"logit_bias: {key!r} must be a token id below {vocab_size} with a bias "
                "between -100 and 100.",
                param="logit_bias",
            )
        result[int(key)] = float(value)
    return result


def decode_image(url: str, param: str, max_pixels: int = 50_000_000) -> Image.Image:
    """data: URL -> RGB PIL image. Blocking: call in a worker thread."""
    return inprocess_request.decode_image(url, param, "blip2", max_pixels)
