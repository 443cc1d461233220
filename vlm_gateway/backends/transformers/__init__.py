"""Backend kind `transformers`: a Hugging Face vision-language model in this process, batched by
the shared in-process engine (docs/transformers.md).

Importing this package does not import torch or transformers: only `generate` does, in the
model thread (tests/test_layers.py checks that the server starts without them)."""

from __future__ import annotations

from vlm_gateway.backends.base import Backend, BackendKind, BuildContext
from vlm_gateway.backends.transformers.backend import TransformersBackend
from vlm_gateway.backends.transformers.settings import TransformersBackendSettings


def build(entry: TransformersBackendSettings, context: BuildContext) -> list[Backend]:
    return [TransformersBackend(entry.name, entry)]


KIND = BackendKind(settings=TransformersBackendSettings, builder=build)
