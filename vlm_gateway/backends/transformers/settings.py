"""`backend: transformers` entries: any Hugging Face image-text-to-text model in the gateway's own
process (docs/transformers.md)."""

from __future__ import annotations

import os
import re
from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator

from vlm_gateway.backends.inprocess import weight_files
from vlm_gateway.backends.transformers import quantization
from vlm_gateway.backends.transformers.generation import GenerationDefaults
from vlm_gateway.backends.transformers.limits import model_max_images
from vlm_gateway.config.settings import GatewaySettings, ModelEntry
from vlm_gateway.images.model_size import model_input_size


class TransformersBackendSettings(ModelEntry):
    """A model `AutoModelForImageTextToText` loads, run with transformers in this process."""

    backend: Literal["transformers"]
    model: Annotated[str, Field(min_length=1)]  # hub id or local directory
    revision: str | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: fp16 on cuda/mps
    device: str = "auto"  # auto: cuda, then mps, then cpu; or cpu, mps, cuda, cuda:N
    attn_implementation: str | None = None  # e.g. sdpa, eager, flash_attention_2
    trust_remote_code: bool = False
    # Threads torch's CPU operators use in the model thread; None: every core but one, which
    # is left to the gateway's own work (requests, image decoding, the processor).
    cpu_threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    max_batch_size: Annotated[int, Field(ge=1, le=256)] = 16
    batch_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 5.0
    chat_template: str | None = None  # a Jinja template replacing the processor's own
    system_prompt: str | None = None  # the system message of requests that send none
    # Tokens when the request sets none; the same as `generation.max_new_tokens` (set one).
    # Unset: the model's generation_config, else 256.
    default_max_tokens: Annotated[int, Field(ge=1)] | None = None
    generation: GenerationDefaults | None = None  # over the model's own generation_config
    quantization: Literal["4bit", "8bit"] | None = None  # bitsandbytes, on a CUDA GPU

    # Images larger than the processor's fixed input size are shrunk to cover it first (a
    # photo's full decode and resize were most of a caption's work); processors that tile or
    # keep a variable resolution get images at their own size (images/model_size.py).
    kind_image_resize: ClassVar[str] = "auto"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.default_max_tokens is not None and self.generation_max_new_tokens is not None:
            raise ValueError(
                "default_max_tokens and generation.max_new_tokens are the same setting: set one"
            )
        problem = quantization.setting_problem(self.quantization, self.device)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def generation_max_new_tokens(self) -> int | None:
        return self.generation.max_new_tokens if self.generation else None

    @property
    def entry_max_new_tokens(self) -> int | None:
        """The entry's default for requests without max tokens (None: the model's own)."""
        return self.generation_max_new_tokens or self.default_max_tokens

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "mps", "cuda") or re.fullmatch(r"cuda:\d+", value):
            return value
        raise ValueError("must be auto, cpu, mps, cuda or cuda:N")

    def preferred_image_size(self) -> tuple[int, int] | None:
        return model_input_size(self.model)

    def known_max_images(self) -> int | None:
        return model_max_images(self.model) or self.kind_max_images

    def threads(self) -> int:
        """torch's CPU threads for this model (`cpu_threads`, or every core but one)."""
        if self.cpu_threads is not None:
            return self.cpu_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return max(1, (cores or os.cpu_count() or 1) - 1)

    def plan_lines(self, index: int, settings: GatewaySettings) -> list[str]:
        revision = f" @ {self.revision}" if self.revision else ""
        quantized = f", quantization: {self.quantization}" if self.quantization else ""
        lines = [
            f"replica {index}: backend transformers, in this process -> {self.model}{revision}",
            f"  device: {self.device}, dtype: {self.dtype}{quantized}, "
            f"attention: {self.attn_implementation or 'the model default'}, "
            f"CPU threads: {self.threads()}",
            "  " + weight_files.plan_line(self.model, self.revision, self.dtype, self.quantization),
            f"  batches of up to {self.max_batch_size}, gathered for {self.batch_wait_ms:g} ms",
        ]
        if self.generation is not None:
            lines.append("  " + self.generation.plan_line() + " (over the model's own)")
        if self.trust_remote_code:
            lines.append(
                "  warning: trust_remote_code is true: the model directory's Python code runs "
                "in this process"
            )
        return lines
