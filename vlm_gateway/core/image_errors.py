"""Image errors: always 400 in the OpenAI envelope, in our own words (never a decoder's or a
socket's exception text, which can leak memory addresses or internal host names)."""

from __future__ import annotations

from vlm_gateway.core.errors import InvalidRequestError


class ImageError(InvalidRequestError):
    default_code = "invalid_image"


class InvalidImageURLError(ImageError):
    default_code = "invalid_image_url"


class BlockedImageURLError(ImageError):
    default_code = "image_url_blocked"


class ImageFetchError(ImageError):
    default_code = "image_fetch_failed"


class ImageTooLargeError(ImageError):
    default_code = "image_too_large"


class TooManyImagesError(ImageError):
    default_code = "too_many_images"


def shorten(url: str, keep: int = 80) -> str:
    """A URL safe to quote in a message or a log: data URLs lose their payload."""
    if url[:5].lower() == "data:":
        head, _, payload = url.partition(",")
        return f"{head[:60]},<{len(payload)} characters>"
    return url if len(url) <= keep else url[:keep] + "..."
