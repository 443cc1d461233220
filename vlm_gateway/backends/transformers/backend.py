"""Backend `transformers`: a Hugging Face image-text-to-text model in the gateway's own process,
with dynamic micro-batching by the shared in-process engine (`vlm_gateway.backends.inprocess`).

What is this kind's own: the request mapped onto the processor's chat template (`request.py`)
and the loading and batched `generate()` (`generate.py`, which imports torch and transformers,
in the model thread). A custom-code model outside transformers' image-text-to-text mapping is
served through its own `chat(msgs=..., tokenizer=...)` instead (`custom_chat.py`, and
`custom_chat_model.py` in the model thread), one answer at a time."""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any, cast

from vlm_gateway.backends.inprocess.backend import GenerateBatch, InProcessBackend
from vlm_gateway.backends.inprocess.batcher import Prepared, RowHooks
from vlm_gateway.backends.inprocess.budget import token_budget
from vlm_gateway.backends.inprocess.loading import ModelFacts
from vlm_gateway.backends.transformers import custom_chat, generation
from vlm_gateway.backends.transformers import request as req
from vlm_gateway.backends.transformers.custom_chat import ChatModel, ChatRow
from vlm_gateway.backends.transformers.limits import context_length
from vlm_gateway.backends.transformers.refusals import refusal
from vlm_gateway.core.protocol import ChatCompletionRequest

if TYPE_CHECKING:
    from transformers import BatchFeature
    from vlm_gateway.backends.transformers.generate import LoadedModel, RowSpec
    from vlm_gateway.backends.transformers.settings import TransformersBackendSettings


class TransformersBackend(InProcessBackend["LoadedModel | ChatModel", "RowSpec | ChatRow"]):
    kind = "transformers"
    label = "transformers"

    def __init__(self, name: str, entry: TransformersBackendSettings) -> None:
        super().__init__(
            name,
            entry.model,
            max_batch_size=entry.max_batch_size,
            batch_wait_ms=entry.batch_wait_ms,
            device=entry.device,
            dtype=entry.dtype,
            loadable=entry.load == "on_demand",
        )
        self._entry = entry
        self._row_spec: type[RowSpec] | None = None

    def _load_blocking(
        self,
    ) -> tuple[LoadedModel | ChatModel, GenerateBatch[LoadedModel | ChatModel, RowSpec | ChatRow]]:
        try:
            from vlm_gateway.backends.transformers import custom_chat_model, generate
        except ImportError as exc:
            raise RuntimeError(
                f"torch and transformers are needed ({exc.name} is missing): "
                "pip install 'vlm-gateway[blip2]'"
            ) from None
        generate.use_cpu_threads(self._entry.threads())
        chat_model = custom_chat_model.load(self._entry) if self._entry.trust_remote_code else None
        if chat_model is not None:
            return chat_model, cast("GenerateBatch[Any, Any]", custom_chat_model.generate_rows)
        self._row_spec = generate.RowSpec
        loaded = generate.load(self._entry)
        defaults = generation.with_defaults(
            loaded.generation_config, self._entry.generation, self._entry.entry_max_new_tokens
        )
        loaded.generation_config = loaded.model.generation_config = defaults
        return loaded, cast("GenerateBatch[Any, Any]", generate.generate_batch)

    def _model_facts(self, model: LoadedModel | ChatModel) -> ModelFacts:
        quantization = self._entry.quantization
        return ModelFacts.of(model.model, model.device, model.dtype, model.parameters, quantization)

    def _how_served(self, model: LoadedModel | ChatModel) -> str:
        if isinstance(model, ChatModel):
            return "served through its chat(), one answer at a time"
        return super()._how_served(model)

    def describe(self) -> dict[str, Any]:
        loaded = self._loaded  # the defaults in force, once loaded; a chat() model keeps its own
        defaults = None
        if loaded is not None and not isinstance(loaded, ChatModel):
            defaults = generation.describe(loaded.generation_config)
        return super().describe() | {"generation": defaults}

    # -- requests ---------------------------------------------------------------------------

    async def _prepare(
        self, request: ChatCompletionRequest, model: LoadedModel | ChatModel
    ) -> Prepared[RowSpec | ChatRow]:
        if isinstance(model, ChatModel):
            prepared = await custom_chat.prepare(request, model, self._entry)
            return cast("Prepared[RowSpec | ChatRow]", prepared)  # Prepared is invariant
        return await self._prepare_template(request, model)

    async def _prepare_template(
        self, request: ChatCompletionRequest, model: LoadedModel
    ) -> Prepared[RowSpec | ChatRow]:
        req.check(request)
        turns, images = req.conversation(request, self._entry.system_prompt)
        samplings = req.sampling(request)
        params = [image.param for image in images]
        turns, inputs = await asyncio.to_thread(_prepare, model, turns, params)
        prompt_tokens = int(inputs["attention_mask"].sum())
        max_tokens = token_budget(
            context_length(model.model.config),
            prompt_tokens,
            request.output_token_limit,
            _default_max_tokens(model),
        )
        row = functools.partial(self._row, turns, inputs, samplings, req.stops(request), max_tokens)
        return Prepared(prompt_tokens, len(samplings), row)

    def _row(
        self,
        turns: req.Conversation,
        inputs: BatchFeature,
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
            inputs=inputs,
            max_new_tokens=max_tokens,
            sampling=samplings[index],
            stop=stop,
            on_text=hooks.on_text,
            is_cancelled=hooks.is_cancelled,
        )


def _default_max_tokens(loaded: LoadedModel) -> int:
    """The request's token limit when it sets none: `generation.with_defaults` made it."""
    return int(loaded.generation_config.max_new_tokens or generation.FALLBACK_MAX_NEW_TOKENS)


def _prepare(
    loaded: LoadedModel, turns: req.Conversation, image_params: list[str]
) -> tuple[req.Conversation, BatchFeature]:
    """Blocking: decode the images and run the processor, once, on this request alone: that
    checks it, counts its prompt tokens (image tokens included) and gives the tensors its rows
    join a batch with."""
    turns = req.with_images(turns)
    try:
        inputs = loaded.inputs([turns])
    except Exception as exc:
        raise refusal(loaded.processor, turns, image_params, exc) from None
    return turns, inputs
