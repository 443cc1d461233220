"""Shrink an image to about the size the model takes, cheaply, before it travels any further.

Vision encoders take 224-448 px while photos are 2-12 MP: decoding every pixel only to throw
most away is most of the work. So an image larger than the model's input size
(`ImageLimits.resize`) is
1. checked from its header alone (byte and pixel limits: a decompression bomb stops here,
   before anything is decoded);
2. decoded straight to about that size: JPEG's DCT scaling (Pillow's `draft()`) decodes
   1/2, 1/4 or 1/8 of each side and skips most of the work;
3. turned upright (EXIF orientation), converted to RGB or L (alpha composited onto white,
   the background vLLM and transformers use when they convert to RGB; CMYK, 16-bit, palette
   and GIF (first frame) converted), shrunk with its aspect ratio kept to the smallest size
   that still *covers* the input size, so the model's own processor (a BLIP-style stretch to
   a square, or a CLIP-style shortest-edge resize and crop) only ever shrinks it further and
   sees what it would have made of the full-size image; never enlarged;
4. re-encoded as a JPEG (quality 90, no chroma subsampling).
`max_image_side` and `detail: low` still cap the longest side. An image that is not larger
than the input size takes the usual path (decode.py: checked, passed through unchanged when
nothing must change).

These functions are plain and picklable: the gateway runs them in a process pool (pool.py).
"""

from __future__ import annotations

import binascii
import io
import os
import tempfile
from typing import TYPE_CHECKING

import pybase64

from vlm_gateway.core.image_errors import ImageError, ImageTooLargeError, InvalidImageURLError
from vlm_gateway.images.decode import (
    ImageLimits,
    PreparedImage,
    check_bytes,
    check_size,
    convert_mode,
    load_or_refuse,
    open_image,
    orientation,
    passes_unchanged,
    prepare_image,
)

if TYPE_CHECKING:
    from PIL import Image

JPEG_QUALITY = 90
_SWAPS_SIDES = frozenset({5, 6, 7, 8})  # EXIF orientations that turn the image a quarter


def covering_size(
    width: int, height: int, target: tuple[int, int], cap: int | None = None
) -> tuple[int, int] | None:
    """The smallest (width, height) with the same aspect that covers `target`, with the
    longest side at most `cap`; None when the image is not larger than that already."""
    scale = max(target[0] / width, target[1] / height)
    if cap is not None:
        scale = min(scale, cap / max(width, height))
    if scale >= 1:
        return None
    return max(1, round(width * scale)), max(1, round(height * scale))


def prepare_for_model(
    data: bytes, detail: str, limits: ImageLimits, what: str = "The image"
) -> PreparedImage:
    """Validate `data`; shrink it to about `limits.resize` if it is larger (see above)."""
    if limits.resize is None:
        return prepare_image(data, detail, limits, what)
    image_format = check_bytes(data, limits, what)
    with open_image(data, image_format, what) as image:
        width, height = check_size(image, limits, what)  # from the header: nothing decoded yet
        upright = _upright_size(image, width, height)
        size = covering_size(*upright, limits.resize, limits.target_side(detail))
        if size is None:
            return prepare_image(data, detail, limits, what)
        if image_format == "JPEG":
            stored = (size[1], size[0]) if upright != (width, height) else size
            image.draft(None, stored)  # DCT scaling: decode at 1/2, 1/4 or 1/8 of each side
        load_or_refuse(image, image_format, what)
        shrunk = _shrunk(image, size, what)
    return PreparedImage("JPEG", encode_jpeg(shrunk), *shrunk.size)


def checked_data_url(
    url: str, detail: str, limits: ImageLimits, what: str, url_bytes: memoryview | None = None
) -> str | None:
    """The header-only path of prepare_data_url (no pixel decoded, about 50 µs for 450 KB, so
    the resolver runs it on the event loop): the data URL to forward when the image may pass
    as it is, None when pixels must be decoded (then prepare_data_url, off the loop).
    `url_bytes`: the URL's ASCII bytes where the caller has them (the request body's,
    core/chat_body.py): the base64 is decoded from a view of them, where a str payload costs
    two copies of it (the slice, and pybase64's own ASCII conversion)."""
    media_type, start = _split_data_url(url, limits, what)
    data = decode_base64(url[start:] if url_bytes is None else url_bytes[start:], what)
    prepared = passes_unchanged(data, detail, limits, what)
    if prepared is None:
        return None
    return url if media_type == prepared.mime else to_data_url(prepared, data, url[start:])


def decode_base64(payload: str | memoryview, what: str) -> bytes:
    """Strict base64 (no whitespace, padding only at the end) with SIMD: pybase64 takes about
    20 µs for 450 KB where binascii.a2b_base64 takes 880 µs."""
    try:
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{what} is not valid base64.", code="invalid_base64") from None


def prepare_data_url(url: str, detail: str, limits: ImageLimits, what: str) -> str:
    """The data URL to forward: the same string when nothing must change."""
    media_type, start = _split_data_url(url, limits, what)
    payload = url[start:]
    data = decode_base64(payload, what)
    prepared = prepare_for_model(data, detail, limits, what)
    if prepared.data is None and media_type == prepared.mime:
        return url
    return to_data_url(prepared, data, payload if prepared.data is None else None)


def prepare_bytes_url(data: bytes, detail: str, limits: ImageLimits, what: str) -> str:
    """Fetched or read bytes as the data URL to forward."""
    return to_data_url(prepare_for_model(data, detail, limits, what), data)


def prepare_file_url(path: str, limits: ImageLimits, what: str) -> str:
    """A local file, read and prepared where this runs (a pool worker: the file's bytes never
    cross the pipe), as a data URL. OSError (unreadable file) is the caller's to report."""
    with open(path, "rb") as file:
        data = file.read(limits.max_bytes + 1)
    return prepare_bytes_url(data, "auto", limits, what)


def prepare_file_to_spool(path: str, limits: ImageLimits, what: str, spool: str) -> str:
    """A local file, checked and prepared like `prepare_file_url`, written into the directory
    `spool` as the exact bytes that URL would carry (a model-sized image as it is); returns the
    new file's path. For engines that read images from disk (vLLM's offline engine)."""
    with open(path, "rb") as file:
        data = file.read(limits.max_bytes + 1)
    prepared = prepare_for_model(data, "auto", limits, what)
    suffix = "." + prepared.mime.rsplit("/", 1)[-1]
    descriptor, spooled = tempfile.mkstemp(suffix=suffix, dir=spool)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data if prepared.data is None else prepared.data)
    return spooled


def to_data_url(prepared: PreparedImage, original: bytes, original_b64: str | None = None) -> str:
    if prepared.data is None and original_b64 is not None:
        return f"data:{prepared.mime};base64,{original_b64}"
    data = original if prepared.data is None else prepared.data
    return f"data:{prepared.mime};base64,{pybase64.b64encode(data).decode('ascii')}"


def encode_jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    # 4:4:4: at model size every pixel's colour counts, and the bytes hardly differ.
    image.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return out.getvalue()


def _split_data_url(url: str, limits: ImageLimits, what: str) -> tuple[str, int]:
    """(media type, where the base64 payload starts): the payload is not copied out here."""
    comma = url.find(",")
    media_type, _, params = url[5 : comma if comma != -1 else len(url)].partition(";")
    if comma == -1 or "base64" not in params.lower().split(";"):
        raise InvalidImageURLError(f"{what} is a data URL without ';base64,'.")
    media_type = media_type.strip().lower()
    if (
        media_type
        and not media_type.startswith("image/")
        and media_type != "application/octet-stream"
    ):
        raise InvalidImageURLError(
            f"{what} is a data URL of type '{media_type[:40]}', not an image type."
        )
    if len(url) - comma - 1 > (limits.max_bytes + 2) // 3 * 4 + 4:
        raise ImageTooLargeError(f"{what} is larger than the limit of {limits.max_bytes} bytes.")
    return media_type, comma + 1


def _upright_size(image: Image.Image, width: int, height: int) -> tuple[int, int]:
    """(width, height) as the image is shown, once its EXIF orientation is applied."""
    try:
        turned = orientation(image) in _SWAPS_SIDES
    except Exception:
        turned = False  # unreadable EXIF: exif_transpose will leave it as stored
    return (height, width) if turned else (width, height)


def _shrunk(image: Image.Image, size: tuple[int, int], what: str) -> Image.Image:
    from PIL import Image, ImageOps

    try:
        image = ImageOps.exif_transpose(image)
        image = _opaque(convert_mode(image))
        if image.size != size:
            # Bicubic, as BLIP's and CLIP's own processors resample; reducing_gap: a cheap box
            # reduction first where draft() could not get close (PNG, WEBP, GIF, beyond 1/8).
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    except Exception:
        raise ImageError(f"{what} could not be decoded; it may be truncated or corrupt.") from None
    return image


def _opaque(image: Image.Image) -> Image.Image:
    """RGB or L; alpha composited onto white."""
    from PIL import Image

    if image.mode in ("RGB", "L"):
        return image
    if image.mode != "RGBA":
        image = image.convert("RGBA")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image).convert("RGB")
