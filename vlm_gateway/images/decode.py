"""Check image bytes against the limits and change them only when something must change.

The fast path reads the header only (format sniffed from the magic bytes, size, mode, EXIF
orientation) plus a cheap end-of-file check that catches truncated files, and hands the bytes
on untouched. Decoding and re-encoding happen only for GIFs (first frame), odd modes, EXIF
rotation, `detail: low` and a per-model `max_image_side`. Decoder exception text is never
shown: Pillow's messages can carry memory addresses (vLLM CVE-2026-22778).

Pillow is imported lazily: the gateway core does not need it to start.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vlm_gateway.core.image_errors import ImageError, ImageTooLargeError

if TYPE_CHECKING:
    from PIL import Image

MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
_PASS_THROUGH_MODES = frozenset({"RGB", "L", "RGBA"})
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ImageLimits:
    max_images: int = 8
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 8
    max_side: int | None = None
    low_detail_side: int = 512
    # (WIDTH, HEIGHT) the model takes: larger images are shrunk to cover it (images/prepare.py).
    resize: tuple[int, int] | None = None

    def describe(self) -> dict[str, int | str | None]:
        """What a client may send, in the config's own key names (for /v1/models)."""
        return {
            "max_images": self.max_images,
            "max_image_bytes": self.max_bytes,
            "max_image_pixels": self.max_pixels,
            "min_image_side": self.min_side,
            "max_image_side": self.max_side,
            "resize": f"{self.resize[0]}x{self.resize[1]}" if self.resize else "none",
        }

    def target_side(self, detail: str) -> int | None:
        sides = [self.max_side, self.low_detail_side if detail == "low" else None]
        return min((side for side in sides if side), default=None)


@dataclass(frozen=True)
class PreparedImage:
    format: str  # JPEG | PNG | WEBP | GIF of the bytes to forward
    data: bytes | None  # None: forward the original bytes unchanged
    width: int
    height: int

    @property
    def mime(self) -> str:
        return MIME_TYPES[self.format]


def sniff_format(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def passes_unchanged(
    data: bytes, detail: str, limits: ImageLimits, what: str = "The image"
) -> PreparedImage | None:
    """The header-only verdict, cheap enough for the event loop: the image as it is when it may
    pass unchanged, None when pixels must be decoded (a file that looks truncated, or something
    to change: prepare_image then). Limits are enforced here, before any pixel is decoded."""
    image_format = check_bytes(data, limits, what)
    with open_image(data, image_format, what) as image:
        width, height = check_size(image, limits, what)
        if not _ends_with_trailer(data, image_format):
            return None
        if _needs_change(image, image_format, width, height, limits.target_side(detail)):
            return None
    return PreparedImage(image_format, None, width, height)


def prepare_image(
    data: bytes, detail: str, limits: ImageLimits, what: str = "The image"
) -> PreparedImage:
    """Validate `data`; re-encode only if the model must not see it as it is."""
    image_format = check_bytes(data, limits, what)
    with open_image(data, image_format, what) as image:
        width, height = check_size(image, limits, what)
        if not _ends_with_trailer(data, image_format):
            load_or_refuse(image, image_format, what)
        if not _needs_change(image, image_format, width, height, limits.target_side(detail)):
            return PreparedImage(image_format, None, width, height)
        converted = _normalized(image, what, limits.target_side(detail))
        out_format = (
            "JPEG" if image_format in ("JPEG", "WEBP") and converted.mode != "RGBA" else "PNG"
        )
        return PreparedImage(out_format, _encode(converted, out_format), *converted.size)


def decode_image(data: bytes, limits: ImageLimits, what: str = "The image") -> Image.Image:
    """A fully loaded RGB image, for backends that run the model in-process."""
    image_format = check_bytes(data, limits, what)
    with open_image(data, image_format, what) as image:
        check_size(image, limits, what)
        converted = _normalized(image, what, limits.max_side)
    return converted if converted.mode == "RGB" else converted.convert("RGB")


def check_bytes(data: bytes, limits: ImageLimits, what: str) -> str:
    if not data:
        raise ImageError(f"{what} is empty (0 bytes).")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"{what} is {len(data)} bytes; the limit is {limits.max_bytes} bytes."
        )
    image_format = sniff_format(data)
    if image_format is None:
        raise ImageError(f"{what} is not a JPEG, PNG, WEBP or GIF file.")
    return image_format


def _ends_with_trailer(data: bytes, image_format: str) -> bool:
    """A cheap end-of-file check: a truncated upload almost never ends with its trailer. Files
    that fail it (truncated, or with data after the trailer, like phones' motion photos) get
    the full decode instead."""
    if image_format == "JPEG":
        return b"\xff\xd9" in data[-1024:]
    if image_format == "PNG":
        return b"IEND" in data[-64:]
    if image_format == "WEBP":
        riff_size: int = struct.unpack("<I", data[4:8])[0]
        return len(data) >= 8 + riff_size
    return b";" in data[-16:]  # GIF trailer


def open_image(data: bytes, image_format: str, what: str) -> Image.Image:
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data), formats=[image_format])
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"{what} has too many pixels (a decompression bomb?).") from None
    except Exception:
        raise ImageError(
            f"{what} could not be read as {image_format}; it may be truncated or corrupt."
        ) from None


def load_or_refuse(image: Image.Image, image_format: str, what: str) -> None:
    try:
        image.load()
    except Exception:
        raise ImageError(f"{what} is truncated or corrupt ({image_format}).") from None


def check_size(image: Image.Image, limits: ImageLimits, what: str) -> tuple[int, int]:
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"{what} is {width}x{height} pixels; the limit is {limits.max_pixels} pixels."
        )
    if min(width, height) < limits.min_side:
        raise ImageError(
            f"{what} is {width}x{height} pixels; each side must be at least "
            f"{limits.min_side} pixels."
        )
    return width, height


def _needs_change(
    image: Image.Image, image_format: str, width: int, height: int, target_side: int | None
) -> bool:
    if image_format == "GIF" or image.mode not in _PASS_THROUGH_MODES:
        return True
    if target_side is not None and max(width, height) > target_side:
        return True
    try:
        return orientation(image) not in (0, 1)
    except Exception:
        return True  # unreadable EXIF: decoding and re-encoding drops it


def orientation(image: Image.Image) -> object:
    """The EXIF orientation tag as the file has it (normally an int 1-8, but unchecked)."""
    from PIL import Image

    if image.format != "PNG":
        return image.getexif().get(_ORIENTATION_TAG, 1)  # read from the header: cheap
    # Pillow's PNG getexif() decodes the whole image to look past IDAT; an eXIf chunk before
    # IDAT (where the PNG spec puts it) is already in `info`, and that is all we look at.
    raw = image.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    exif.load(raw)
    return exif.get(_ORIENTATION_TAG, 1)


def _normalized(image: Image.Image, what: str, target_side: int | None) -> Image.Image:
    """First frame, EXIF orientation applied, RGB/RGBA/L, longest side at most target_side."""
    from PIL import Image, ImageOps

    try:
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
        image = convert_mode(image)
        if target_side is not None and max(image.size) > target_side:
            image.thumbnail((target_side, target_side), Image.Resampling.LANCZOS)
    except Exception:
        raise ImageError(f"{what} could not be decoded; it may be truncated or corrupt.") from None
    return image


def convert_mode(image: Image.Image) -> Image.Image:
    if image.mode in _PASS_THROUGH_MODES:
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        # Pillow's I->L conversion clips instead of scaling: scale 16-bit to 8-bit first.
        return image.convert("I").point(lambda value: value / 256).convert("L")
    has_alpha = image.mode in ("LA", "PA", "RGBa", "La") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _encode(image: Image.Image, image_format: str) -> bytes:
    out = io.BytesIO()
    if image_format == "JPEG":
        image.save(out, format="JPEG", quality=92)
    else:
        image.save(out, format="PNG", compress_level=3)
    return out.getvalue()
