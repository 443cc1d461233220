"""Backend kind `blip2`: Hugging Face BLIP-2 in this process, with dynamic micro-batching.

Importing this package does not import torch or transformers: only `generate` does, when a
model is loaded (tests/test_layers.py checks that the server starts without them)."""

from __future__ import annotations

from vlm_gateway.backends.base import Backend, BackendKind, BuildContext
from vlm_gateway.backends.blip2.backend import Blip2Backend
from vlm_gateway.backends.blip2.settings import Blip2BackendSettings


def build(entry: Blip2BackendSettings, context: BuildContext) -> list[Backend]:
    return [
        Blip2Backend(
            entry.name,
            entry.model,
            device=entry.device,
            dtype=entry.dtype,
            max_batch_size=entry.max_batch_size,
            batch_wait_ms=entry.batch_wait_ms,
            context_length=entry.context_length,
            default_max_tokens=entry.default_max_tokens,
            loadable=entry.load == "on_demand",
        )
    ]


KIND = BackendKind(settings=Blip2BackendSettings, builder=build)
