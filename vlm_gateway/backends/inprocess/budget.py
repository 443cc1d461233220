"""How many tokens a request's answer may have on an in-process model: what it asked for, within
the model's context length, or a 400 with the counts (as vLLM and OpenAI give it)."""

from __future__ import annotations

from vlm_gateway.core.errors import ContextLengthExceededError


def token_budget(
    context: int | None,
    prompt_tokens: int,
    requested: int | None,
    default: int,
    images_counted: str = "their images' tokens included",
) -> int:
    """`requested` (max_tokens), else `default` cut to the room the prompt leaves. A prompt
    that leaves no room, or an explicit limit beyond it, is a 400 naming `messages`;
    `images_counted` says in it how the images count in the prompt's tokens. `context` None:
    unknown, nothing is checked."""
    if context is None:
        return requested or default
    room = context - prompt_tokens
    if requested is None and room >= 1:
        return min(default, room)
    wanted = requested or default
    if wanted > room:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + wanted} tokens ({prompt_tokens} in the messages, {images_counted}, "
            f"and {wanted} in the completion). Please reduce the length of the messages or "
            "completion.",
            param="messages",
        )
    return wanted
