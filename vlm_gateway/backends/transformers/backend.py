"""Backend `transformers`: a Hugging Face image-text-to-text model in the gateway's own process,
with dynamic micro-batching by the shared in-process engine (`vlm_gateway.backends.inprocess`).

What is this kind's own: the request mapped onto the processor's chat template (`request.py`)
and the loading and batched `generate()` (`generate.py`, which alone imports torch and
transformers, in the model thread)."""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

from vlm_gateway.backends.inprocess.backend import (
    GenerateBatch,
    InProcessBackend,
    loads_on_demand,
)
from vlm_gateway.backends.inprocess.batcher import Prepared, RowHooks
from vlm_gateway.backends.transformers import request as req
from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.protocol import ChatCompletionRequest

if TYPE_CHECKING:
    from vlm_gateway.backends.transformers.generate import LoadedModel, RowSpec
    from vlm_gateway.backends.transformers.settings import TransformersBackendSettings


class TransformersBackend(InProcessBackend["LoadedModel", "RowSpec"]):
    kind = "transformers"
    label = "transformers"

    def __init__(self, name: str, entry: TransformersBackendSettings) -> None:
        super().__init__(
            name,
            entry.model,
            max_batch_size=entry.max_batch_size,
            batch_wait_ms=entry.batch_wait_ms,
            loadable=loads_on_demand(entry),
        )
        self._entry = entry
        self._row_spec: type[RowSpec] | None = None

    def _load_blocking(self) -> tuple[LoadedModel, GenerateBatch[LoadedModel, RowSpec]]:
        try:
            from vlm_gateway.backends.transformers import generate
        except ImportError as exc:
            raise RuntimeError(
                f"torch and transformers are needed ({exc.name} is missing): "
                "pip install 'vlm-gateway[blip2]'"
            ) from None
        self._row_spec = generate.RowSpec
        return generate.load(self._entry), generate.generate_batch

    def _loaded_line(self, model: LoadedModel) -> str:
        dtype = str(model.dtype).removeprefix("torch.")
        return (
            f"{type(model.model).__name__} loaded from {self.model_ref} on {model.device} "
            f"({dtype}, {model.parameters:,} parameters), batches of up to {self.max_batch_size}"
        )

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        loaded = self._loaded
        info.update(
            device=str(loaded.device) if loaded else self._entry.device,
            dtype=str(loaded.dtype).removeprefix("torch.") if loaded else self._entry.dtype,
            parameters=loaded.parameters if loaded else None,
        )
        return info

    # -- requests ---------------------------------------------------------------------------

    async def _prepare(
        self, request: ChatCompletionRequest, model: LoadedModel
    ) -> Prepared[RowSpec]:
        req.check(request)
        turns, _ = req.conversation(request, self._entry.system_prompt)
        samplings = req.sampling(request)
        turns, prompt_tokens = await asyncio.to_thread(_prepare, model, turns)
        max_tokens = request.output_token_limit or self._entry.default_max_tokens
        row = functools.partial(self._row, turns, samplings, req.stops(request), max_tokens)
        return Prepared(prompt_tokens, len(samplings), row)

    def _row(
        self,
        turns: req.Conversation,
        samplings: list[req.Sampling],
        stop: tuple[str, ...],
        max_tokens: int,
        index: int,
        hooks: RowHooks,
    ) -> RowSpec:
        row_spec = self._row_spec
        assert row_spec is not None  # the load sets it before `_loaded`, checked by _submit
        return row_spec(
            conversation=turns,
            max_new_tokens=max_tokens,
            sampling=samplings[index],
            stop=stop,
            on_text=hooks.on_text,
            is_cancelled=hooks.is_cancelled,
        )


def _prepare(loaded: LoadedModel, turns: req.Conversation) -> tuple[req.Conversation, int]:
    """Blocking: decode the images and run the processor once, alone, to check the request and
    count its prompt tokens (image tokens included)."""
    turns = req.with_images(turns)
    try:
        inputs = loaded.inputs([turns])
    except Exception as exc:
        raise InvalidRequestError(
            f"The messages could not be prepared for this model ({type(exc).__name__}: "
            f"{str(exc)[:200]}).",
            param="messages",
        ) from None
    return turns, int(inputs["attention_mask"].sum())
