"""What every in-process kind checks in a chat request the same way: the fields none of them
honours (a 400 naming the field) and the image data URLs they decode (pure Python; Pillow
lazily, through the gateway's safe decoder)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING

from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.image_errors import ImageError
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.images.decode import ImageLimits
from vlm_gateway.images.decode import decode_image as safe_decode_image

if TYPE_CHECKING:
    from PIL import Image

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,", re.I)
# Extra (non-OpenAI) fields some upstreams accept; harmless to ignore here, as they only tune
# how a request is logged or routed elsewhere.
_IGNORED_EXTRAS = frozenset(
    {
        "stream_options",
        "service_tier",
        "store",
        "prompt_cache_key",
        "safety_identifier",
        "verbosity",
        "reasoning_effort",
    }
)


def check_supported(
    request: ChatCompletionRequest, backend: str, extras: frozenset[str] = frozenset()
) -> None:
    """400 for every field no in-process kind honours, naming it; `extras`: the non-OpenAI
    fields the kind takes (e.g. top_k)."""
    if request.tools:
        unsupported(backend, "tools", "it has no tool calling")
    if isinstance(request.tool_choice, dict) or request.tool_choice not in (None, "none", "auto"):
        unsupported(backend, "tool_choice", "it has no tool calling")
    if request.logprobs:
        unsupported(backend, "logprobs", "it does not return log probabilities")
    if request.top_logprobs:
        unsupported(backend, "top_logprobs", "it does not return log probabilities")
    fmt = (request.response_format or {}).get("type", "text")
    if fmt != "text":
        unsupported(backend, "response_format", f"it cannot constrain output to {fmt}")
    for name in request.model_extra or {}:
        if name not in _IGNORED_EXTRAS and name not in extras:
            unsupported(backend, name, "the field is not part of what this backend understands")


def unsupported(backend: str, param: str, why: str) -> None:
    raise InvalidRequestError(
        f"'{param}' is not supported by the {backend} backend: {why}.", param=param
    )


def decode_image(url: str, param: str, backend: str, max_pixels: int = 50_000_000) -> Image.Image:
    """data: URL -> RGB PIL image. Blocking: call in a worker thread. Errors are ours, never
    the decoder's text (it can leak addresses and internals)."""
    if not url.startswith("data:"):
        raise InvalidRequestError(
            f"The {backend} backend takes images as data: URLs (data:image/png;base64,...); "
            "fetching http(s) image URLs is not supported here yet.",
            param=param,
        )
    match = _DATA_URL.match(url)
    if match is None or (match["mime"] and not match["mime"].lower().startswith("image/")):
        raise InvalidRequestError(
            "The image data URL must look like data:image/<format>;base64,<data>.", param=param
        )
    try:
        data = base64.b64decode(url[match.end() :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError("The image data URL is not valid base64.", param=param) from None
    # The gateway's safe decoder (sniffed format, bomb and truncation checks, EXIF orientation,
    # odd modes, first GIF frame); the route already applied the model's size limits.
    limits = ImageLimits(max_bytes=len(data) + 1, max_pixels=max_pixels, min_side=1)
    try:
        return safe_decode_image(data, limits)
    except ImageError:
        raise InvalidRequestError(
            "The image could not be decoded: send a valid PNG, JPEG, GIF or WebP image "
            f"of at most {max_pixels:,} pixels.",
            param=param,
        ) from None
