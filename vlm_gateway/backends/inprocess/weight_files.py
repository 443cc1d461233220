"""How many parameters a model has and how much memory its weights take, read from the headers
of its safetensors files without loading them (no torch): for check-config's plan of an
in-process model whose files are on this machine (a local directory or the Hugging Face cache).

A safetensors file starts with the length of its JSON header (8 bytes, little-endian), then
the header, which gives every tensor's shape: the count is the sum of their products."""

from __future__ import annotations

import json
import math
from pathlib import Path

from vlm_gateway.images.model_size import local_model_dir

_INDEX = "model.safetensors.index.json"
_MAX_HEADER_BYTES = 100 * 2**20  # a header is KiBs to a few MiBs; more means not safetensors
# Bytes a parameter takes on the device, by dtype or quantization.
_BYTES_PER_PARAMETER = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "8bit": 1.0, "4bit": 0.5}


def parameter_count(model: str, revision: str | None = None) -> int | None:
    """Parameters in `model`'s safetensors weights; None when they are not here or unreadable."""
    directory = local_model_dir(model, revision)
    if directory is None:
        return None
    try:
        counts = [_tensor_elements(path) for path in _weight_files(directory)]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sum(counts) or None


def _weight_files(directory: Path) -> list[Path]:
    """The sharded checkpoint's files when there is an index, else `model.safetensors`, else
    every safetensors file (some repositories also hold a second, consolidated copy)."""
    index = directory / _INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    return [single] if single.is_file() else sorted(directory.glob("*.safetensors"))


def _tensor_elements(path: Path) -> int:
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
        if not 0 < length <= _MAX_HEADER_BYTES:
            raise ValueError(f"{path.name} is not a safetensors file")
        header = json.loads(file.read(length))
    return sum(
        math.prod(int(side) for side in tensor["shape"])
        for name, tensor in header.items()
        if name != "__metadata__"
    )


def plan_line(model: str, revision: str | None, dtype: str, quantization: str | None = None) -> str:
    """check-config's line on the weights of an in-process model."""
    count = parameter_count(model, revision)
    if count is None:
        return "parameters: counted at load (no safetensors weights of it on this machine yet)"
    if quantization:
        size = f"about {_gigabytes(count, quantization)} at {quantization.removesuffix('bit')} bits"
    elif dtype == "auto":
        size = (
            f"about {_gigabytes(count, 'float16')} in float16 on a GPU, "
            f"{_gigabytes(count, 'float32')} in float32 on cpu"
        )
    else:
        size = f"about {_gigabytes(count, dtype)} in {dtype}"
    return f"parameters: {count:,} ({_short_count(count)}); weights {size}"


def _gigabytes(count: int, dtype: str) -> str:
    size = count * _BYTES_PER_PARAMETER[dtype]
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def _short_count(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return str(count)
