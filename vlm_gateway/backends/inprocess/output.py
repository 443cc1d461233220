"""The chat.completion objects and SSE chunks in-process backends answer with (the same shapes
the official SDK parses from OpenAI and vLLM)."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from vlm_gateway.core.sse import frame

if TYPE_CHECKING:
    from vlm_gateway.backends.inprocess.batcher import RowResult


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(model: str, results: list[RowResult], prompt_tokens: int) -> dict[str, Any]:
    """`results`: one RowResult (text, finish_reason, completion_tokens) per choice."""
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": result.text, "refusal": None},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
            for index, result in enumerate(results)
        ],
        "usage": usage(prompt_tokens, sum(r.completion_tokens for r in results)),
    }


class ChunkWriter:
    """Frames the events of one streamed completion. With include_usage, every chunk carries
    `"usage": null` and a last chunk with no choices carries the counts, as OpenAI does."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = completion_id()
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]], usage_: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage_
        return frame(chunk)

    def delta(self, index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._chunk([choice])

    def role(self, index: int) -> bytes:
        return self.delta(index, {"role": "assistant", "content": ""})

    def content(self, index: int, text: str) -> bytes:
        return self.delta(index, {"content": text})

    def finish(self, index: int, finish_reason: str) -> bytes:
        return self.delta(index, {}, finish_reason)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return self._chunk([], usage(prompt_tokens, completion_tokens))
