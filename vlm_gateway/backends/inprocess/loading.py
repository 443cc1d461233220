"""What an in-process model's loading tells operators: a line when it starts, a line (and the
`/ready` reason) every `every_s` while it runs, since a large model takes minutes, and what
was loaded (`ModelFacts`) for the last start-up line, `/ready` and `/v1/models`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

PROGRESS_EVERY_S = 30.0

# One load at a time in the process, of every in-process kind: models load in their own model
# threads, and transformers 5 is not thread-safe there. Its lazy module can fail with "cannot
# import name 'AutoProcessor'" (vectorize-io/hindsight#994), and two concurrent from_pretrained
# calls can leave weights on the meta device ("Cannot copy out of meta tensor"): both seen here,
# about 1 start in 4, the second also between a BLIP-2 and a transformers model when each kind
# had a lock of its own. Process-wide, as transformers' state is.
LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelFacts:
    """A loaded model as a kind reports it."""

    architecture: str  # e.g. LlavaForConditionalGeneration
    device: str  # where it runs: cpu, cuda:0, mps
    dtype: str  # float16, bfloat16, float32
    parameters: int
    quantization: str | None = None  # 4bit, 8bit

    @classmethod
    def of(
        cls,
        model: object,
        device: object,
        dtype: object,
        parameters: int,
        quantization: str | None = None,
    ) -> ModelFacts:
        """From a loaded torch module, its torch device and dtype."""
        return cls(
            type(model).__name__,
            str(device),
            str(dtype).removeprefix("torch."),
            parameters,
            quantization,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "device": self.device,
            "dtype": self.dtype,
            "parameters": self.parameters,
            "quantization": self.quantization,
        }

    def summary(self) -> str:
        weights = f"{self.dtype}, {self.quantization}" if self.quantization else self.dtype
        return f"{self.parameters:,} parameters on {self.device} ({weights})"


def planned(device: str, dtype: str) -> dict[str, Any]:
    """`ModelFacts.describe()`'s fields before the load: the configured device and dtype."""
    return {"device": device, "dtype": dtype, "parameters": None}


async def reporting_progress(
    load: asyncio.Future[T], report: Callable[[float], None], every_s: float = PROGRESS_EVERY_S
) -> T:
    """`await load`, calling `report(seconds so far)` every `every_s` while it runs."""
    started = time.monotonic()
    while True:
        done, _ = await asyncio.wait({load}, timeout=every_s)
        if done:
            return load.result()
        report(time.monotonic() - started)
