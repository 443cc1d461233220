"""The header-only check of data URL images (issue 14): what it settles on the event loop
without decoding a pixel, what it hands on to the full check, and the strict base64 it takes."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.images.test_decode import png_header_only
from tests.images.test_resolve import request, resolve, settings, urls_of
from tests.support.images import data_url, png_bytes
from vlm_gateway.core.image_errors import ImageError, ImageTooLargeError
from vlm_gateway.images.decode import ImageLimits
from vlm_gateway.images.prepare import checked_data_url, prepare_data_url

LIMITS = ImageLimits()


def jpeg_bytes(width: int, height: int, orientation: int | None = None) -> bytes:
    image = Image.new("RGB", (width, height), "green")
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


def test_an_image_that_may_pass_is_settled_from_its_header_as_the_same_string():
    url = data_url(png_bytes(40, 40))
    assert checked_data_url(url, "auto", LIMITS, "The image") is url


def test_a_wrong_declared_type_is_corrected_from_the_header_and_the_payload_kept():
    payload = base64.b64encode(jpeg_bytes(40, 40)).decode()
    url = f"data:image/png;base64,{payload}"
    assert checked_data_url(url, "auto", LIMITS, "x") == f"data:image/jpeg;base64,{payload}"


@pytest.mark.parametrize(
    "image,detail",
    [
        (png_bytes(600, 100), "low"),  # to shrink: longer than the low-detail side
        (jpeg_bytes(40, 30, orientation=6), "auto"),  # to turn upright
        (png_bytes(40, 40)[:2000], "auto"),  # no trailer: it may be truncated, decode to know
    ],
    ids=["detail-low", "exif-rotated", "no-trailer"],
)
def test_images_that_need_their_pixels_are_handed_to_the_full_check(image, detail):
    url = data_url(image, "image/jpeg" if image.startswith(b"\xff\xd8") else "image/png")
    assert checked_data_url(url, detail, LIMITS, "The image") is None


def test_the_full_check_then_gives_the_answer_the_router_path_gave():
    truncated = data_url(png_bytes(40, 40)[:2000])
    assert checked_data_url(truncated, "auto", LIMITS, "The image") is None
    with pytest.raises(ImageError, match="truncated or corrupt"):
        prepare_data_url(truncated, "auto", LIMITS, "The image")


def test_pixel_limits_are_enforced_from_the_header_before_anything_is_decoded():
    bomb = data_url(png_header_only(8000, 6000))  # 48 MP claimed, a few dozen bytes sent
    with pytest.raises(ImageTooLargeError, match="8000x6000 pixels"):
        checked_data_url(bomb, "auto", LIMITS, "The image")


GOOD = base64.b64encode(png_bytes(40, 40)).decode()


@pytest.mark.parametrize(
    "payload",
    [
        GOOD[:76] + "\n" + GOOD[76:],  # MIME-style line breaks: a lenient decoder drops them
        GOOD[:76] + " " + GOOD[76:],
        GOOD + "\r\n",
        GOOD[:-3],  # cut short
        GOOD[:8] + "=" + GOOD[9:],  # padding inside
        GOOD.replace("+", "-").replace("/", "_"),  # the URL-safe alphabet
        GOOD[:-1] + "é",  # not ASCII
    ],
    ids=["line-break", "space", "crlf", "cut", "inner-padding", "url-safe", "non-ascii"],
)
@pytest.mark.parametrize("given_bytes", [False, True], ids=["str", "body-bytes"])
def test_base64_is_strict(payload, given_bytes):
    """Also when it is decoded from the request body's own bytes (core/chat_body.py)."""
    assert "+" in GOOD or "/" in GOOD  # so the URL-safe case differs
    url = f"data:image/png;base64,{payload}"
    url_bytes = memoryview(url.encode()) if given_bytes else None
    with pytest.raises(ImageError) as caught:
        checked_data_url(url, "auto", LIMITS, "The image", url_bytes)
    assert caught.value.code == "invalid_base64"


def test_from_the_body_bytes_the_answers_are_the_same():
    png, jpeg = data_url(png_bytes(40, 40)), data_url(jpeg_bytes(40, 40), "image/png")
    for url in (png, jpeg):
        expected = checked_data_url(url, "auto", LIMITS, "x")
        assert checked_data_url(url, "auto", LIMITS, "x", memoryview(url.encode())) == expected
    assert checked_data_url(png, "auto", LIMITS, "x", memoryview(png.encode())) is png


def test_the_resolver_forwards_what_passes_and_shrinks_what_must_change():
    clean, wide = data_url(png_bytes(40, 40)), data_url(png_bytes(600, 100))
    body = resolve(settings(), request("wide", clean, wide, detail="low"))
    out = urls_of(body)
    assert out[0] is clean
    shrunk = Image.open(io.BytesIO(base64.b64decode(out[1].partition(",")[2])))
    assert max(shrunk.size) == LIMITS.low_detail_side
