"""The 400 for a conversation the model's processor refuses, naming the image part it refuses
where one is to blame (Qwen2-VL's processor, for one, raises on an image more than 200 times
longer than wide). Runs in a worker thread, only once the whole conversation has failed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.image_errors import ImageError


def refusal(
    processor: Any, turns: list[dict[str, Any]], params: list[str], error: Exception
) -> InvalidRequestError:
    """Why `processor` refused the conversation `turns` (images decoded; `params[i]` names
    its i-th image part): the first image its image processor refuses alone, else the
    messages as a whole."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        for param, image in zip(params, _images(turns), strict=False):
            try:
                image_processor(images=[image])
            except Exception as refused:
                # The processor's words say what is wrong with the image (its shape, its
                # size): no decoder ran here, so nothing of the machine is in them.
                return ImageError(
                    f"The image could not be prepared for this model ({_what(refused)}).",
                    param=param,
                )
    return InvalidRequestError(
        f"The messages could not be prepared for this model ({_what(error)}).", param="messages"
    )


def _images(turns: list[dict[str, Any]]) -> Iterator[Any]:
    for turn in turns:
        for part in turn["content"]:
            if part.get("type") == "image":
                yield part["image"]


def _what(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"
