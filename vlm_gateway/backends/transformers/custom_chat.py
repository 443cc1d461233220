"""Custom-code models served through their own `chat(msgs=..., tokenizer=...)` (MiniCPM-V/o's
interface): what a chat request means to them. Pure Python (Pillow lazily, in a worker thread);
`custom_chat_model.py` loads and runs them in the model thread.

MiniCPM-V 2.6's `chat` takes `msgs=[{"role": "user" | "assistant", "content": [PIL images and
str, in order]}]`, the first of them a user turn, and the system message as `system_prompt=`;
so system and developer messages are joined into that argument (or, for a `chat` that has no
such argument, put first as a `system` turn, as MiniCPM-o takes it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlm_gateway.backends.inprocess.batcher import Prepared, RowHooks
from vlm_gateway.backends.transformers import request as req
from vlm_gateway.backends.transformers.generation import FALLBACK_MAX_NEW_TOKENS
from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.protocol import ChatCompletionRequest

if TYPE_CHECKING:
    from vlm_gateway.backends.transformers.settings import TransformersBackendSettings

Msgs = list[dict[str, Any]]


@dataclass
class ChatModel:
    """A custom-code model loaded with `AutoModel` (trust_remote_code) and its tokenizer."""

    model: Any
    tokenizer: Any
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    parameters: int
    chat_arguments: frozenset[str]  # what its `chat` names
    chat_takes_any: bool  # its `chat` has **kwargs

    def takes(self, argument: str) -> bool:
        return self.chat_takes_any or argument in self.chat_arguments

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False)) if text else 0


@dataclass
class ChatRow:
    """One answer (one choice of one request) from the model's `chat`."""

    msgs: Msgs  # images decoded
    system_prompt: str | None
    max_new_tokens: int
    sampling: req.Sampling
    stop: tuple[str, ...] = ()
    on_text: Callable[[str], None] | None = None  # called from the model thread
    is_cancelled: Callable[[], bool] = lambda: False


async def prepare(
    request: ChatCompletionRequest, model: ChatModel, entry: TransformersBackendSettings
) -> Prepared[ChatRow]:
    """The request checked (a 400 for what this path cannot do) and its rows' recipe."""
    req.check(request)
    turns, _ = req.conversation(request, entry.system_prompt)
    first = next(index for index, turn in enumerate(turns) if turn["role"] != "system")
    if turns[first]["role"] != "user":
        raise InvalidRequestError(
            "This model's chat interface wants a user message before any assistant one.",
            param="messages",
        )
    samplings = req.sampling(request)
    msgs, system, prompt_tokens = await asyncio.to_thread(_msgs, model, turns)
    if system is not None and not model.takes("system_prompt"):
        msgs.insert(0, {"role": "system", "content": [system]})
        system = None
    max_tokens = request.output_token_limit or entry.entry_max_new_tokens or FALLBACK_MAX_NEW_TOKENS
    stop = req.stops(request)

    def row(index: int, hooks: RowHooks) -> ChatRow:
        sampling = samplings[index]
        return ChatRow(msgs, system, max_tokens, sampling, stop, hooks.on_text, hooks.is_cancelled)

    return Prepared(prompt_tokens, len(samplings), row)


def _msgs(model: ChatModel, turns: req.Conversation) -> tuple[Msgs, str | None, int]:
    """Blocking: the msgs with images decoded, the system prompt, and the prompt's text tokens
    (the chat interface does not say how many tokens its images become)."""
    system: list[str] = []
    msgs: Msgs = []
    for turn in req.with_images(turns):
        content = [
            part["image"] if part["type"] == "image" else part["text"] for part in turn["content"]
        ]
        if turn["role"] == "system":
            system.extend(part for part in content if isinstance(part, str))
        else:
            msgs.append({"role": turn["role"], "content": content})
    texts = [*system, *(part for msg in msgs for part in msg["content"] if isinstance(part, str))]
    return msgs, "\n".join(system) or None, sum(model.count_tokens(text) for text in texts)
