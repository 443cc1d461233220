"""Image bytes against the limits: hostile and odd inputs get our own 400s, ordinary ones pass
through untouched, and only what must change is decoded and re-encoded."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from tests.support.images import data_url, png_bytes
from vlm_gateway.core.image_errors import ImageError
from vlm_gateway.images.decode import ImageLimits, decode_image, prepare_image
from vlm_gateway.images.resolve import prepare_data_url

LIMITS = ImageLimits()


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, in a few dozen bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def refused(data: bytes, detail: str = "auto", limits: ImageLimits = LIMITS) -> ImageError:
    with pytest.raises(ImageError) as caught:
        prepare_image(data, detail, limits)
    assert caught.value.status_code == 400
    return caught.value


def prepared_image(data: bytes, detail: str = "auto", limits: ImageLimits = LIMITS):
    prepared = prepare_image(data, detail, limits)
    assert prepared.data is not None, "expected the image to be re-encoded"
    return Image.open(io.BytesIO(prepared.data)), prepared


# -- refused ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("width,height", [(50_000, 50_000), (10_000, 10_000)])
def test_decompression_bombs_are_refused_from_the_header(width, height):
    error = refused(png_header_only(width, height))
    assert "pixels" in error.message and error.code == "image_too_large"


def test_a_1x1_image_is_refused():
    assert "at least 8 pixels" in refused(png_bytes(1, 1)).message


def test_an_empty_image_is_refused():
    assert "empty" in refused(b"").message


def test_a_truncated_jpeg_is_refused():
    jpeg = encode(Image.new("RGB", (64, 64), "red"), "JPEG")
    assert "truncated" in refused(jpeg[: len(jpeg) // 2]).message


def test_a_truncated_png_is_refused():
    png = png_bytes(64, 64)
    assert "truncated" in refused(png[: len(png) // 2]).message


@pytest.mark.parametrize(
    "data",
    [
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        encode(Image.new("RGB", (16, 16)), "BMP"),
        encode(Image.new("RGB", (16, 16)), "TIFF"),
        b"\xff\xd8\xff" + b"\0" * 100 + b"\xff\xd9",
    ],
)
def test_other_formats_and_garbage_are_refused_without_decoder_text(data):
    message = refused(data).message
    assert "0x" not in message and "PIL" not in message and "Traceback" not in message


def test_a_corrupt_body_behind_a_valid_header_gives_our_words_only():
    png = bytearray(png_bytes(64, 64))
    png[60:200] = b"\xff" * 140
    message = refused(bytes(png), detail="low", limits=ImageLimits(max_side=16)).message
    assert message.startswith("The image") and "0x" not in message


def test_too_many_bytes_are_refused():
    assert (
        "limit is 100 bytes"
        in refused(png_bytes(30, 30), limits=ImageLimits(max_bytes=100)).message
    )


# -- passed through, byte for byte -------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,fmt", [("RGB", "PNG"), ("RGB", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("RGB", "WEBP")]
)
def test_ordinary_images_pass_through_undecoded(mode, fmt):
    data = encode(Image.new(mode, (40, 30)), fmt)
    prepared = prepare_image(data, "auto", LIMITS)
    assert (
        prepared.data is None
        and prepared.format == fmt
        and (prepared.width, prepared.height) == (40, 30)
    )


def test_data_after_the_trailer_is_checked_by_decoding_and_still_passes_through():
    """Phones append videos and metadata after a JPEG's end marker (motion photos)."""
    jpeg = encode(Image.new("RGB", (40, 40), "red"), "JPEG") + b"\0ftypmp42" + bytes(5000)
    assert prepare_image(jpeg, "auto", LIMITS).data is None


def test_a_data_url_that_needs_nothing_is_forwarded_as_the_same_string():
    url = data_url(png_bytes(40, 40))
    assert prepare_data_url(url, "high", LIMITS, "The image") is url


def test_a_wrong_declared_mime_is_corrected_and_the_payload_kept():
    jpeg = encode(Image.new("RGB", (40, 40), "blue"), "JPEG")
    payload = base64.b64encode(jpeg).decode()
    out = prepare_data_url(f"data:image/png;base64,{payload}", "auto", LIMITS, "The image")
    assert out == f"data:image/jpeg;base64,{payload}"


@pytest.mark.parametrize(
    "url,why",
    [
        ("data:image/png;base64,iVBORw0KGgo!!!", "not valid base64"),
        ("data:image/png;base64,iVBORw0KGgo", "not valid base64"),
        ("data:image/png,rawbytes", "without ';base64,'"),
        ("data:text/html;base64,PGgxPmhpPC9oMT4=", "not an image type"),
    ],
)
def test_bad_data_urls_are_refused(url, why):
    with pytest.raises(ImageError) as caught:
        prepare_data_url(url, "auto", LIMITS, "The image")
    assert why in caught.value.message


# -- decoded and re-encoded, only when something must change ---------------------------------------


def test_an_animated_gif_becomes_its_first_frame():
    frames = [Image.new("RGB", (32, 32), color) for color in ("red", "lime", "blue")]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    image, prepared = prepared_image(gif.getvalue())
    assert prepared.format == "PNG" and getattr(image, "n_frames", 1) == 1
    assert image.convert("RGB").getpixel((16, 16)) == (255, 0, 0)


def test_a_cmyk_jpeg_is_converted_to_rgb():
    image, prepared = prepared_image(encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"))
    assert image.mode == "RGB" and prepared.format == "JPEG"
    red, green, blue = image.getpixel((16, 16))
    assert red > 200 and green < 60 and blue < 60


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(fmt):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image, _ = prepared_image(encode(Image.new("RGB", (60, 20), "white"), fmt, exif=exif))
    assert image.size == (20, 60)
    assert image.getexif().get(0x0112, 1) == 1


@pytest.mark.parametrize(
    "mode,expected", [("P", "RGB"), ("LA", "RGBA"), ("I;16", "L"), ("1", "RGB")]
)
def test_odd_modes_are_converted(mode, expected):
    source = Image.new(mode, (32, 32))
    if mode == "I;16":
        source = Image.frombytes("I;16", (32, 32), struct.pack("<H", 40_000) * 1024)
    image, _ = prepared_image(encode(source, "PNG"))
    assert image.mode == expected
    if mode == "I;16":
        assert 150 <= image.getpixel((0, 0)) <= 160  # scaled 40000/65535, not clipped to 255


def test_detail_low_downscales_the_longest_side_to_512():
    image, _ = prepared_image(encode(Image.new("RGB", (1024, 768)), "PNG"), detail="low")
    assert image.size == (512, 384)


def test_detail_low_leaves_small_images_untouched():
    assert prepare_image(png_bytes(100, 50), "low", LIMITS).data is None


def test_high_detail_is_bounded_by_the_models_max_image_side():
    limits = ImageLimits(max_side=300)
    image, _ = prepared_image(encode(Image.new("RGB", (1200, 900)), "JPEG"), "high", limits)
    assert image.size == (300, 225)


def test_decode_image_gives_an_rgb_image_for_in_process_models():
    exif = Image.Exif()
    exif[0x0112] = 8
    image = decode_image(encode(Image.new("CMYK", (60, 20)), "JPEG", exif=exif), LIMITS)
    assert image.mode == "RGB" and image.size == (20, 60)
    with pytest.raises(ImageError):
        decode_image(png_bytes(1, 1), LIMITS)
