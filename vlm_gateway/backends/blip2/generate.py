"""BLIP-2 in transformers: loading, image preprocessing and batched token-by-token generation.

Everything here blocks and runs in worker threads; the backend's event loop never calls it
directly. torch and transformers are imported here only, and this module is imported only when
a blip2 model is configured, so the gateway runs without them otherwise.

Generation is our own decoding loop over the language model (OPT, decoder-only) with a KV
cache, not `generate()`: each row of a batch keeps its own sampling settings, seed, token limit
and stop strings, and every step hands each row's new text to its request (true per-token
streaming across a batch). Rows are left-padded and masked, with explicit position ids, so a
row's numbers do not depend on its neighbours.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch

from vlm_gateway.backends.inprocess.batcher import RowResult
from vlm_gateway.backends.inprocess.loading import LOAD_LOCK
from vlm_gateway.backends.inprocess.rowtext import RowText

if TYPE_CHECKING:  # at run time transformers is imported by load_blip2 only, under its lock
    from PIL import Image
    from transformers import (
        BaseImageProcessor,
        Blip2ForConditionalGeneration,
        Cache,
        PreTrainedTokenizerBase,
    )

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedBlip2:
    model: Blip2ForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    image_processor: BaseImageProcessor
    device: torch.device
    dtype: torch.dtype
    num_query_tokens: int
    image_token_id: int
    pad_token_id: int
    eos_token_ids: frozenset[int]
    context_length: int
    vocab_size: int
    parameters: int

    def prompt_ids(self, text: str) -> list[int]:
        """Query-token placeholders, then BOS and the text (BLIP-2 puts the image first)."""
        text_ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        return [self.image_token_id] * self.num_query_tokens + list(text_ids)

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        features = self.image_processor(images=image, return_tensors="pt")
        pixels: torch.Tensor = features["pixel_values"]
        return pixels

    def decode(self, token_ids: list[int]) -> str:
        # One flat list of ids decodes to one string (a list of lists would give a list).
        return cast(
            str,
            self.tokenizer.decode(
                token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            ),
        )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


def load_blip2(model_ref: str, device: str, dtype: str, context_length: int | None) -> LoadedBlip2:
    """Load processor and model once. Raises with a readable reason on any failure."""
    torch_device = resolve_device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    torch_dtype = resolve_dtype(dtype, torch_device)
    with LOAD_LOCK:  # one load at a time, whatever the kind (inprocess/loading.py)
        from transformers import AutoProcessor, Blip2ForConditionalGeneration, PreTrainedConfig

        # transformers leaves AutoProcessor.from_pretrained unannotated.
        processor = AutoProcessor.from_pretrained(model_ref)  # type: ignore[no-untyped-call]
        model = Blip2ForConditionalGeneration.from_pretrained(model_ref, dtype=torch_dtype)
    # Typed `dict | PreTrainedConfig | None` because that is what the constructor takes; it is
    # a PreTrainedConfig once built.
    text_config = model.config.text_config
    if not isinstance(text_config, PreTrainedConfig):
        raise RuntimeError("the BLIP-2 config has no text_config")
    if getattr(text_config, "is_encoder_decoder", False):
        raise RuntimeError("only BLIP-2 with a decoder-only language model (OPT) is supported")
    image_token_index = model.config.image_token_index
    if image_token_index is None:
        raise RuntimeError("the BLIP-2 config has no image_token_index")
    # transformers wraps `to` with functools.wraps, so mypy reads the bound call as unbound.
    model.to(torch_device).eval()  # type: ignore[arg-type]
    tokenizer = processor.tokenizer
    eos = {text_config.eos_token_id, tokenizer.eos_token_id} - {None}
    max_positions = int(getattr(text_config, "max_position_embeddings", 2048))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else text_config.pad_token_id
    return LoadedBlip2(
        model=model,
        tokenizer=tokenizer,
        image_processor=processor.image_processor,
        device=torch_device,
        dtype=torch_dtype,
        num_query_tokens=int(model.config.num_query_tokens),
        image_token_id=int(image_token_index),
        pad_token_id=int(pad if pad is not None else 0),
        eos_token_ids=frozenset(int(t) for t in eos),
        context_length=min(context_length or max_positions, max_positions),
        vocab_size=int(text_config.vocab_size),
        parameters=model.num_parameters(),
    )


@dataclass
class RowSpec:
    """One sequence to generate (one choice of one request)."""

    prompt_ids: list[int]
    pixel_values: torch.Tensor  # (1, 3, H, W), already preprocessed
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    strip_leading_space: bool = True
    on_text: Callable[[str], None] | None = None  # called from the worker thread
    is_cancelled: Callable[[], bool] = lambda: False


def generate_batch(
    loaded: LoadedBlip2, specs: list[RowSpec], should_stop: threading.Event | None = None
) -> list[RowResult]:
    """Generate every row together; rows finish independently. Blocking: run in a thread."""
    with torch.inference_mode():
        return _Decoder(loaded, specs).run(should_stop or threading.Event())


class _Decoder:
    def __init__(self, loaded: LoadedBlip2, specs: list[RowSpec]) -> None:
        self.loaded, self.specs = loaded, specs
        self.device = loaded.device
        self.rows = [_row_text(spec, loaded) for spec in specs]
        self.temperature = torch.tensor([s.temperature for s in specs], device=self.device)
        self.generators = [self._generator(s) for s in specs]
        self.counts = self._penalty_counts()
        self.bias = self._logit_bias()

    def _generator(self, spec: RowSpec) -> torch.Generator | None:
        if spec.temperature == 0:
            return None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(spec.seed)
        return generator

    def _penalty_counts(self) -> torch.Tensor | None:
        if not any(s.presence_penalty or s.frequency_penalty for s in self.specs):
            return None
        return torch.zeros(len(self.specs), self.loaded.vocab_size, device=self.device)

    def _logit_bias(self) -> torch.Tensor | None:
        if not any(s.logit_bias for s in self.specs):
            return None
        bias = torch.zeros(len(self.specs), self.loaded.vocab_size, device=self.device)
        for row, spec in enumerate(self.specs):
            for token, value in spec.logit_bias.items():
                bias[row, token] = value
        return bias

    def run(self, should_stop: threading.Event) -> list[RowResult]:
        logits, cache, attention, positions = self._prefill()
        longest = max(spec.max_new_tokens for spec in self.specs)
        for _ in range(longest):
            tokens = self._choose(logits)
            for row, token in zip(self.rows, tokens.tolist(), strict=True):
                if row.finish is None:
                    row.add(token)
            if all(
                r.finish or s.is_cancelled() for r, s in zip(self.rows, self.specs, strict=True)
            ):
                break
            if should_stop.is_set():
                raise RuntimeError("the backend is stopping")
            attention = torch.cat([attention, attention.new_ones(len(self.rows), 1)], dim=1)
            positions = positions + 1
            out = self.loaded.model.language_model(
                input_ids=tokens.unsqueeze(1),
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
            logits, cache = out.logits[:, -1, :], out.past_key_values
        return [row.result() for row in self.rows]

    def _prefill(self) -> tuple[torch.Tensor, Cache, torch.Tensor, torch.Tensor]:
        loaded, model = self.loaded, self.loaded.model
        pixels = torch.cat([s.pixel_values for s in self.specs]).to(self.device, loaded.dtype)
        image_features = model.get_image_features(pixel_values=pixels).pooler_output
        width = max(len(s.prompt_ids) for s in self.specs)
        ids = torch.full((len(self.specs), width), loaded.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(self.specs), width), dtype=torch.long)
        for row, spec in enumerate(self.specs):
            ids[row, width - len(spec.prompt_ids) :] = torch.tensor(spec.prompt_ids)
            attention[row, width - len(spec.prompt_ids) :] = 1
        ids, attention = ids.to(self.device), attention.to(self.device)
        embeds = model.get_input_embeddings()(ids)
        image_slots = (ids == loaded.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(image_slots, image_features.to(embeds.dtype))
        # Explicit positions: a left-padded row counts from 0 at its first real token.
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        out = model.language_model(
            inputs_embeds=embeds, attention_mask=attention, position_ids=positions, use_cache=True
        )
        return out.logits[:, -1, :], out.past_key_values, attention, positions[:, -1:]

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.bias is not None:
            logits = logits + self.bias
        if self.counts is not None:
            frequency = torch.tensor([s.frequency_penalty for s in self.specs], device=self.device)
            presence = torch.tensor([s.presence_penalty for s in self.specs], device=self.device)
            logits = logits - frequency[:, None] * self.counts
            logits = logits - presence[:, None] * (self.counts > 0).float()
        chosen = logits.argmax(dim=-1)
        for row, generator in enumerate(self.generators):
            if generator is not None:
                chosen[row] = _sample(logits[row], self.specs[row], generator)
        if self.counts is not None:
            self.counts[torch.arange(len(self.specs)), chosen] += 1
        return chosen


def _row_text(spec: RowSpec, loaded: LoadedBlip2) -> RowText:
    return RowText(
        loaded.decode,
        loaded.eos_token_ids,
        spec.max_new_tokens,
        spec.stop,
        spec.on_text,
        strip_leading_space=spec.strip_leading_space,
    )


def _sample(logits: torch.Tensor, spec: RowSpec, generator: torch.Generator) -> torch.Tensor:
    probs = torch.softmax(logits / spec.temperature, dim=-1)
    if spec.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs[before >= spec.top_p] = 0.0  # keeps at least the most likely token
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[0]
