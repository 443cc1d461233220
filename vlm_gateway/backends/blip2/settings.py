"""`backend: blip2` entries: BLIP-2 in the gateway's own process (docs/blip2.md)."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from vlm_gateway.backends.inprocess import weight_files
from vlm_gateway.config.settings import GatewaySettings, ModelEntry
from vlm_gateway.images.model_size import model_input_size

BLIP2_INPUT_SIZE = (224, 224)


class Blip2BackendSettings(ModelEntry):
    """BLIP-2 run in the gateway's own process with transformers (docs/blip2.md)."""

    backend: Literal["blip2"]
    model: Annotated[str, Field(min_length=1)] = "Salesforce/blip2-opt-2.7b"  # hub id or dir
    device: str = "auto"  # auto (cuda when available, else cpu), cpu, cuda, cuda:N
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: fp16 on cuda
    max_batch_size: Annotated[int, Field(ge=1, le=256)] = 16
    batch_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 5.0
    context_length: Annotated[int, Field(gt=0)] | None = None  # default: the model's own
    default_max_tokens: Annotated[int, Field(ge=1)] = 64

    kind_max_images: ClassVar[int | None] = 1  # BLIP-2 conditions on exactly one image
    kind_image_resize: ClassVar[str] = "auto"

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    def preferred_image_size(self) -> tuple[int, int] | None:
        """The image processor's size when the weights are here; every BLIP-2 takes 224x224."""
        return model_input_size(self.model) or BLIP2_INPUT_SIZE

    def plan_lines(self, index: int, settings: GatewaySettings) -> list[str]:
        context = f"{self.context_length} tokens" if self.context_length else "the model's own"
        return [
            f"replica {index}: backend blip2, in this process -> {self.model}",
            f"  device: {self.device}, dtype: {self.dtype}, context: {context}",
            "  " + weight_files.plan_line(self.model, None, self.dtype),
            f"  batches of up to {self.max_batch_size}, gathered for {self.batch_wait_ms:g} ms",
        ]
