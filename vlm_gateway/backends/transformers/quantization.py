"""4- and 8-bit weights (`quantization: 4bit | 8bit`) through bitsandbytes, on a CUDA GPU.

4bit is NF4 with double quantization, computing in the entry's dtype (float16 by `auto` on
cuda); 8bit is LLM.int8(). transformers leaves the layers it must (the output head, some vision
parts) in the dtype. bitsandbytes places the weights on the GPU as it loads them: a quantized
model is never moved afterwards (transformers refuses `.to()` on one).

Two checks: `setting_problem` when the config is read (check-config, serve: no torch), and
`load_kwargs` when the model loads, where the device is known."""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

INSTALL = "pip install 'vlm-gateway[quantization]'"


def setting_problem(quantization: str | None, device: str) -> str | None:
    """Why `quantization` cannot work with `device` on this machine, or None."""
    if quantization is None:
        return None
    if device in ("cpu", "mps"):
        return f"quantization {quantization} needs a CUDA GPU (bitsandbytes); device is {device}"
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"quantization {quantization} needs bitsandbytes, which is not installed: {INSTALL}"
    return None


def load_kwargs(quantization: str, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """`from_pretrained`'s arguments for quantized weights on `device`; RuntimeError with the
    reason where they cannot be had."""
    if device.type != "cuda":
        raise RuntimeError(
            f"quantization {quantization} needs a CUDA GPU (bitsandbytes); the model would "
            f"run on {device} (device: auto found no CUDA GPU)"
        )
    try:  # here, or transformers fails deep in its loader
        importlib.import_module("bitsandbytes")
    except ImportError as exc:
        raise RuntimeError(
            f"quantization {quantization} needs bitsandbytes ({exc}): {INSTALL}"
        ) from None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        config = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
    return {"quantization_config": config, "device_map": {"": device.index or 0}}
