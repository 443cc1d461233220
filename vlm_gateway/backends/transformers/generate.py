"""A transformers image-text-to-text model: loading, and batched generation through the model's
own `generate()` (so every architecture's position ids, image-token expansion and cache work as
transformers does them).

Everything here blocks and runs in the model thread or worker threads. torch and transformers
are imported here only, and this module is imported only when the model loads.

A batch is one left-padded `generate()` call whatever its rows' sampling settings: each row's
temperature, top-p, top-k, repetition penalty and seed are applied by a logits processor of its
own (row_sampling.py). A streamer sees every step's tokens for all rows and hands each row its
new text; a stopping criterion ends each row at its own token limit, stop string or
cancellation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from transformers.generation.logits_process import LogitsProcessorList
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from vlm_gateway.backends.inprocess.batcher import RowResult
from vlm_gateway.backends.inprocess.loading import LOAD_LOCK
from vlm_gateway.backends.inprocess.rowtext import RowText
from vlm_gateway.backends.transformers import batch_inputs, quantization
from vlm_gateway.backends.transformers.request import Conversation, Sampling
from vlm_gateway.backends.transformers.row_sampling import (
    NEUTRAL_GENERATE_KWARGS,
    RowPlan,
    RowSampler,
)

if TYPE_CHECKING:
    from transformers import BatchFeature, GenerationConfig, PreTrainedModel, ProcessorMixin
    from vlm_gateway.backends.transformers.settings import TransformersBackendSettings

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    processor: ProcessorMixin
    device: torch.device
    dtype: torch.dtype
    chat_template: str | None
    eos_token_ids: frozenset[int]
    pad_token_id: int
    generation_config: GenerationConfig
    parameters: int

    def inputs(self, conversations: list[Conversation]) -> BatchFeature:
        """The processor's chat template, tokenized, left-padded, with the images' tensors."""
        kwargs: dict[str, Any] = {"processor_kwargs": {"padding": True}}
        if self.chat_template is not None:
            kwargs["chat_template"] = self.chat_template
        return cast(
            "BatchFeature",
            self.processor.apply_chat_template(
                conversations,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                **kwargs,
            ),
        )

    def decode(self, tokens: list[int]) -> str:
        tokenizer: Any = getattr(self.processor, "tokenizer", None)
        return cast(
            str,
            tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False),
        )


def resolve_device(device: str) -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return _DTYPES[dtype]


def use_cpu_threads(count: int) -> None:
    """torch's CPU threads for every batch (the process's setting: called in the model thread,
    before the load).
    torch's default, a thread per core, left no core for the gateway's own threads (requests,
    image decoding, the processor): on 2 busy cores the OpenMP workers waited on each other
    behind them, and a tiny model's batches took 5-10x longer."""
    torch.set_num_threads(count)


def load(entry: TransformersBackendSettings) -> LoadedModel:
    """Load processor and model once. Raises with a readable reason on any failure."""
    device = resolve_device(entry.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {entry.device!r} requested but CUDA is not available")
    dtype = resolve_dtype(entry.dtype, device)
    common: dict[str, Any] = {"revision": entry.revision}
    if entry.trust_remote_code:
        common["trust_remote_code"] = True
    with LOAD_LOCK:  # one load at a time, whatever the kind (inprocess/loading.py)
        from transformers import AutoModelForImageTextToText
        from vlm_gateway.backends.transformers.processor import load_processor

        processor = load_processor(entry.model, **common)
        model_kwargs = dict(common, dtype=dtype)
        if entry.attn_implementation:
            model_kwargs["attn_implementation"] = entry.attn_implementation
        if entry.quantization:  # placed on the device as it loads
            model_kwargs.update(quantization.load_kwargs(entry.quantization, device, dtype))
        model = AutoModelForImageTextToText.from_pretrained(entry.model, **model_kwargs)
    if not entry.quantization:
        model = model.to(device)  # type: ignore[arg-type]
    model.eval()  # type: ignore[no-untyped-call]  # transformers wraps it untyped
    tokenizer: Any = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise RuntimeError("the processor has no tokenizer")
    tokenizer.padding_side = "left"
    config = model.generation_config
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = frozenset(int(t) for t in (eos if isinstance(eos, list) else [eos]) if t is not None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)
    return LoadedModel(
        model=model,
        processor=processor,
        device=device,
        dtype=dtype,
        chat_template=entry.chat_template,
        eos_token_ids=eos_ids,
        pad_token_id=int(pad),
        generation_config=config,
        parameters=model.num_parameters(),  # 4-bit weights counted unpacked
    )


@dataclass
class RowSpec:
    """One sequence to generate (one choice of one request)."""

    conversation: Conversation  # images decoded
    max_new_tokens: int
    sampling: Sampling
    stop: tuple[str, ...] = ()
    on_text: Callable[[str], None] | None = None  # called from the model thread
    is_cancelled: Callable[[], bool] = lambda: False
    # The processor's output for this conversation alone (None: the batch runs the processor).
    inputs: BatchFeature | None = None


def generate_batch(
    loaded: LoadedModel, specs: list[RowSpec], should_stop: threading.Event | None = None
) -> list[RowResult]:
    """Generate every row in one left-padded `generate()` call, each row with its own sampling
    (row_sampling.py). Blocking."""
    stopping = should_stop or threading.Event()
    rows = [
        RowText(loaded.decode, loaded.eos_token_ids, s.max_new_tokens, s.stop, s.on_text)
        for s in specs
    ]
    plans = [RowPlan.of(spec.sampling, loaded.generation_config) for spec in specs]
    with torch.inference_mode():
        inputs = _joined_inputs(loaded, specs)
        inputs = inputs.to(loaded.device)
        if loaded.dtype != torch.float32:
            inputs = inputs.to(loaded.dtype)  # floating tensors only (pixel values)
        loaded.model.generate(  # type: ignore[operator]
            **inputs,
            **NEUTRAL_GENERATE_KWARGS,
            logits_processor=LogitsProcessorList([RowSampler(plans, loaded.device)]),
            max_new_tokens=max(s.max_new_tokens for s in specs),
            pad_token_id=loaded.pad_token_id,
            streamer=_RowsStreamer(rows),
            stopping_criteria=StoppingCriteriaList([_RowsDone(rows, specs, stopping)]),
        )
    if stopping.is_set():
        raise RuntimeError("the backend is stopping")
    return [row.result() for row in rows]


def _joined_inputs(loaded: LoadedModel, specs: list[RowSpec]) -> BatchFeature:
    """Each row's own processor output joined; the processor on the whole batch where a row
    has none or the rows do not join that way (e.g. text-only beside images)."""
    rows = [spec.inputs for spec in specs]
    present = [row for row in rows if row is not None]
    joined = batch_inputs.join(present, loaded.pad_token_id) if len(present) == len(rows) else None
    return joined if joined is not None else loaded.inputs([s.conversation for s in specs])


class _RowsStreamer(BaseStreamer):
    """Every step's new token of every row, to that row (the first `put` is the prompt)."""

    def __init__(self, rows: list[RowText]) -> None:
        self.rows = rows
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            if row.finish is None:
                row.add(int(token))

    def end(self) -> None:
        pass


class _RowsDone(StoppingCriteria):
    """A row is done once finished (its limit, a stop string, EOS) or its client went away;
    every row is when the backend stops."""

    def __init__(self, rows: list[RowText], specs: list[RowSpec], stop: threading.Event) -> None:
        self.rows, self.specs, self.stop = rows, specs, stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> Any:
        if self.stop.is_set():
            return torch.ones(len(self.rows), dtype=torch.bool, device=input_ids.device)
        done = [
            r.finish is not None or s.is_cancelled()
            for r, s in zip(self.rows, self.specs, strict=True)
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
