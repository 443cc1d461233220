"""What a transformers model can take, read from its own config: images per request and context
length. Pure Python: the image limit is read from config.json before anything loads (the
gateway refuses extra images before the request reaches the backend), the context length from
the loaded model's config (inprocess/budget.py holds requests to it)."""

from __future__ import annotations

from typing import Any

from vlm_gateway.images.model_size import model_config

# Architectures that condition on exactly one image per prompt (vLLM says 1 for them too, in
# their `get_supported_mm_limits`). The others in transformers' image-text-to-text mapping take
# any number, bounded by their context length and the gateway's `images.max_images`.
_ONE_IMAGE_MODEL_TYPES = frozenset({"blip-2", "instructblip", "paligemma"})


def model_max_images(model: str) -> int | None:
    """Images per request the model's architecture takes (from its config.json's model_type);
    None where it sets no limit or its config is not on this machine yet."""
    config = model_config(model)
    if config is not None and config.get("model_type") in _ONE_IMAGE_MODEL_TYPES:
        return 1
    return None


def context_length(config: Any) -> int | None:
    """The most tokens (prompt and answer) the loaded model's text part has positions for."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    length = getattr(text, "max_position_embeddings", None)
    return length if isinstance(length, int) and length > 0 else None
