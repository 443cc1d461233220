"""Backend `blip2`: BLIP-2 from transformers in the gateway's own process, with dynamic
micro-batching by the shared in-process engine (`vlm_gateway.backends.inprocess`).

What is BLIP-2's own lives here: the request mapped onto its prompt (`request.py`), the image
and prompt prepared for its processor, the token budget against its context, and its loading
and decoding loop (`generate.py`).

torch and transformers are imported only by `vlm_gateway.backends.blip2.generate`, and that
only inside the loading thread, so a gateway with no blip2 model never pays for them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

from vlm_gateway.backends.blip2.request import (
    Blip2Prompt,
    Sampling,
    build_prompt,
    check_supported,
    decode_image,
    sampling_options,
)
from vlm_gateway.backends.inprocess.backend import GenerateBatch, InProcessBackend
from vlm_gateway.backends.inprocess.batcher import Prepared, RowHooks
from vlm_gateway.backends.inprocess.budget import token_budget
from vlm_gateway.backends.inprocess.loading import ModelFacts
from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.protocol import ChatCompletionRequest

if TYPE_CHECKING:
    import torch

    from vlm_gateway.backends.blip2.generate import LoadedBlip2, RowSpec

log = logging.getLogger(__name__)


class Blip2Backend(InProcessBackend["LoadedBlip2", "RowSpec"]):
    kind = "blip2"
    label = "BLIP-2"

    def __init__(
        self,
        name: str,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 16,
        batch_wait_ms: float = 5.0,
        context_length: int | None = None,
        default_max_tokens: int = 64,
        loadable: bool = False,
    ) -> None:
        super().__init__(
            name,
            model,
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            device=device,
            dtype=dtype,
            loadable=loadable,
        )
        self._device, self._dtype = device, dtype
        self._context_length = context_length
        self._default_max_tokens = default_max_tokens
        self._row_spec: type[RowSpec] | None = None
        self._noted_system = False

    def _load_blocking(self) -> tuple[LoadedBlip2, GenerateBatch[LoadedBlip2, RowSpec]]:
        try:
            from vlm_gateway.backends.blip2 import generate as blip2_generate
        except ImportError as exc:
            raise RuntimeError(
                f"the blip2 extra is not installed ({exc.name} is missing): "
                "pip install 'vlm-gateway[blip2]'"
            ) from None
        self._row_spec = blip2_generate.RowSpec
        loaded = blip2_generate.load_blip2(
            self.model_ref, self._device, self._dtype, self._context_length
        )
        return loaded, blip2_generate.generate_batch

    def _model_facts(self, model: LoadedBlip2) -> ModelFacts:
        return ModelFacts.of(model.model, model.device, model.dtype, model.parameters)

    def describe(self) -> dict[str, Any]:
        loaded = self._loaded
        return super().describe() | {"context_length": loaded.context_length if loaded else None}

    # -- requests ---------------------------------------------------------------------------

    async def _prepare(
        self, request: ChatCompletionRequest, model: LoadedBlip2
    ) -> Prepared[RowSpec]:
        check_supported(request)
        prompt = build_prompt(request)
        sampling = sampling_options(request, model.vocab_size)
        self._note_ignored_system(prompt)
        prompt_ids, pixels = await asyncio.to_thread(_prepare, model, prompt)
        max_tokens = self._token_budget(model, len(prompt_ids), sampling.max_tokens)
        row = functools.partial(self._row, prompt, prompt_ids, pixels, sampling, max_tokens)
        return Prepared(len(prompt_ids), sampling.n, row)

    def _row(
        self,
        prompt: Blip2Prompt,
        prompt_ids: list[int],
        pixels: torch.Tensor,
        sampling: Sampling,
        max_tokens: int,
        index: int,
        hooks: RowHooks,
    ) -> RowSpec:
        row_spec = self._row_spec
        assert row_spec is not None  # the load sets it before `_loaded`, checked by _submit
        return row_spec(
            prompt_ids=prompt_ids,
            pixel_values=pixels,
            max_new_tokens=max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seeds[index],
            stop=sampling.stop,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            logit_bias=sampling.logit_bias,
            strip_leading_space=not prompt.continues_text,
            on_text=hooks.on_text,
            is_cancelled=hooks.is_cancelled,
        )

    def _token_budget(self, loaded: LoadedBlip2, prompt_tokens: int, requested: int | None) -> int:
        counted = f"including the image's {loaded.num_query_tokens} query tokens"
        return token_budget(
            loaded.context_length, prompt_tokens, requested, self._default_max_tokens, counted
        )

    def _note_ignored_system(self, prompt: Blip2Prompt) -> None:
        if prompt.ignored_system:
            level = logging.DEBUG if self._noted_system else logging.INFO
            log.log(level, "model %s: system/developer messages are ignored by BLIP-2", self.name)
            self._noted_system = True


def _prepare(loaded: LoadedBlip2, prompt: Blip2Prompt) -> tuple[list[int], torch.Tensor]:
    """Blocking: decode and preprocess the image, tokenize the prompt."""
    image = decode_image(prompt.image_url, prompt.image_param)
    try:
        pixels = loaded.pixel_values(image)
    except Exception:
        raise InvalidRequestError(
            "The image could not be processed for BLIP-2.", param=prompt.image_param
        ) from None
    return loaded.prompt_ids(prompt.text), pixels
