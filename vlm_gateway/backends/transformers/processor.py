"""A model's processor, loaded where `AutoProcessor` cannot: transformers 5's video processors
all need torchvision, which the gateway's environment need not have, so `AutoProcessor` on a
Qwen2-VL (or Qwen2.5-VL, Qwen3-VL, SmolVLM) directory raises ImportError.

transformers is imported inside the functions: the HTTP app must never pay for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import ProcessorMixin


def load_processor(model_dir: str | Path, **kwargs: Any) -> ProcessorMixin:
    """`AutoProcessor.from_pretrained(model_dir, **kwargs)`, or, where that fails for want of
    torchvision, the same processor without its video processor.

    transformers 5's video processors (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM, ...) all need
    torchvision. Without it, the processor class named in the directory is loaded through a
    subclass that leaves the video processor out: images and text work as with the whole
    processor (the image processor falls back to its PIL version). Such a processor has no
    `video_processor` attribute: a caller must refuse video itself (what the processor does with
    one is unchecked). Any other error is raised as it is.
    """
    from transformers import AutoProcessor

    try:
        # AutoProcessor is unannotated in transformers.
        return AutoProcessor.from_pretrained(model_dir, **kwargs)  # type: ignore[no-untyped-call,no-any-return]
    except ImportError as error:
        if "torchvision" not in str(error).lower():
            raise
        images_only = _images_only_class(_processor_class_name(Path(model_dir)))
        if images_only is None:
            raise
    return images_only.from_pretrained(model_dir, **kwargs)


def _processor_class_name(model_dir: Path) -> str | None:
    for file in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        try:
            config = json.loads((model_dir / file).read_text())
        except (OSError, ValueError):
            continue
        name = config.get("processor_class") if isinstance(config, dict) else None
        if isinstance(name, str):
            return name
    return None


def _images_only_class(name: str | None) -> type[ProcessorMixin] | None:
    """A subclass of transformers' processor class `name` without its video processor, or None
    where transformers has no such class or it takes no video processor."""
    import transformers

    base = getattr(transformers, name, None) if name else None
    if not isinstance(base, type) or not issubclass(base, transformers.ProcessorMixin):
        return None
    every: list[str] = base.get_attributes()  # type: ignore[no-untyped-call]
    attributes = [attribute for attribute in every if attribute != "video_processor"]
    if len(attributes) == len(every):
        return None

    def get_attributes(cls: type) -> list[str]:
        # ProcessorMixin loads, checks and saves exactly these sub-processors.
        return list(attributes)

    return type(base.__name__, (base,), {"get_attributes": classmethod(get_attributes)})
