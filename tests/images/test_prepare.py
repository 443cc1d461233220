"""Shrinking images to a model's input size: aspect, orientation, modes and formats come out
right, a bomb is refused from its header before anything is decoded, JPEGs are decoded at a
fraction of their size, and small or model-sized images pass through untouched."""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path

import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from tests.images.test_decode import encode, png_header_only
from tests.support.images import data_url
from vlm_gateway.core.image_errors import ImageError
from vlm_gateway.images.decode import ImageLimits
from vlm_gateway.images.prepare import (
    covering_size,
    prepare_bytes_url,
    prepare_data_url,
    prepare_file_to_spool,
    prepare_file_url,
    prepare_for_model,
)

TO_224 = ImageLimits(resize=(224, 224))
RED, BLUE = (255, 0, 0), (0, 0, 255)


def halves(width: int, height: int, left=RED, right=BLUE, mode: str = "RGB") -> Image.Image:
    """Left half one colour, right half another: shows which way an image was turned."""
    image = Image.new(mode, (width, height), left)
    image.paste(right, (width // 2, 0, width, height))
    return image


def shrunk(data: bytes, limits: ImageLimits = TO_224, detail: str = "auto") -> Image.Image:
    prepared = prepare_for_model(data, detail, limits)
    assert prepared.data is not None and prepared.format == "JPEG"
    image = Image.open(io.BytesIO(prepared.data))
    assert image.format == "JPEG" and image.size == (prepared.width, prepared.height)
    return image


def near(pixel, colour, tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


# -- size ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size,expected",
    [
        ((2400, 1600), (336, 224)),  # 3:2 photo: the short side reaches the target
        ((1600, 2400), (224, 336)),
        ((3000, 300), (2240, 224)),  # a panorama keeps its aspect too
        ((900, 900), (224, 224)),
    ],
)
def test_aspect_is_kept_and_the_target_just_covered(size, expected):
    image = shrunk(encode(halves(*size), "JPEG"))
    assert image.size == expected


def test_an_image_not_larger_than_the_target_passes_through_unchanged():
    for size in [(224, 224), (200, 150), (300, 224)]:
        data = encode(halves(*size), "PNG")
        prepared = prepare_for_model(data, "auto", TO_224)
        assert prepared.data is None and (prepared.width, prepared.height) == size


def test_max_image_side_and_detail_low_still_cap_the_longest_side():
    data = encode(halves(3000, 300), "JPEG")
    assert shrunk(data, ImageLimits(resize=(224, 224), max_side=1000)).size == (1000, 100)
    assert shrunk(data, detail="low").size == (512, 51)
    assert covering_size(100, 100, (224, 224)) is None  # never enlarged


def test_jpegs_are_decoded_at_a_fraction_of_their_size(monkeypatch):
    decoded_at = []
    real_load = JpegImagePlugin.JpegImageFile.load

    def spy(self):
        decoded_at.append(self.size)
        return real_load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
    assert shrunk(encode(halves(2400, 1600), "JPEG")).size == (336, 224)
    assert set(decoded_at) == {(600, 400)}  # DCT scaling at 1/4, not 2400x1600 then resized


# -- orientation, modes, formats ------------------------------------------------------------------


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown turned 90 degrees clockwise
    data = encode(halves(800, 400), "JPEG", exif=exif.tobytes())
    image = shrunk(data, ImageLimits(resize=(100, 100))).convert("RGB")
    assert image.size == (100, 200)  # shown upright: taller than wide
    # Turned clockwise, the stored left (red) half is now on top.
    assert near(image.getpixel((50, 20)), RED) and near(image.getpixel((50, 180)), BLUE)


def test_alpha_is_composited_onto_white():
    image = halves(600, 600, (255, 0, 0, 255), (0, 0, 0, 0), mode="RGBA")
    result = shrunk(encode(image, "PNG"))
    assert result.mode == "RGB"
    assert near(result.getpixel((50, 112)), RED)
    assert near(result.getpixel((170, 112)), (255, 255, 255))  # transparent black -> white


def test_cmyk_becomes_rgb():
    cmyk = Image.new("CMYK", (600, 400), (0, 255, 255, 0))  # red in CMYK
    result = shrunk(encode(cmyk, "JPEG"))
    assert result.mode == "RGB" and near(result.getpixel((100, 100)), RED)


def test_16_bit_png_is_scaled_to_8_bit_not_clipped():
    deep = Image.new("I;16", (600, 400), 32768)  # half of 16-bit white
    result = shrunk(encode(deep, "PNG"))
    assert result.mode == "L" and abs(result.getpixel((100, 100)) - 128) <= 2


def test_palette_images_with_and_without_transparency():
    plain = halves(600, 400).convert("P")
    result = shrunk(encode(plain, "PNG"))
    assert result.mode == "RGB" and near(result.getpixel((20, 100)), RED)
    see_through = halves(600, 400).convert("P")
    see_through.info["transparency"] = see_through.getpixel((0, 0))  # the red entry
    result = shrunk(encode(see_through, "PNG", transparency=see_through.getpixel((0, 0))))
    assert near(result.getpixel((20, 100)), (255, 255, 255))
    assert near(result.getpixel((300, 100)), BLUE)


def test_gif_first_frame():
    frames = [Image.new("RGB", (600, 400), RED), Image.new("RGB", (600, 400), BLUE)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    result = shrunk(out.getvalue())
    assert near(result.getpixel((100, 100)), RED)


# -- refused -------------------------------------------------------------------------------------


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims width x height."""
    data = bytearray(encode(halves(64, 64), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    "bomb",
    [
        jpeg_claiming(8_000, 8_000),  # over our 40 MP limit, under Pillow's own bomb check
        png_header_only(8_000, 8_000),
        jpeg_claiming(60_000, 60_000),  # over Pillow's: refused as it opens the header
    ],
)
def test_a_bomb_is_refused_from_its_header_before_any_decode(monkeypatch, bomb):
    def no_decoding(self):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", no_decoding)
    with pytest.raises(ImageError) as caught:
        prepare_for_model(bomb, "auto", TO_224)
    assert caught.value.code == "image_too_large" and "pixels" in caught.value.message


def test_corrupt_and_truncated_images_are_errors_in_our_words():
    jpeg = encode(halves(2400, 1600), "JPEG")
    for data in [jpeg[: len(jpeg) // 2], b"\xff\xd8\xff" + b"garbage" * 100]:
        with pytest.raises(ImageError) as caught:
            prepare_for_model(data, "auto", TO_224)
        assert caught.value.status_code == 400
        assert "corrupt" in caught.value.message or "could not be read" in caught.value.message
        assert "0x" not in caught.value.message  # never a decoder's own text


# -- as data URLs ---------------------------------------------------------------------------------


def test_data_urls_are_shrunk_and_model_sized_ones_returned_as_they_came():
    big = data_url(encode(halves(2400, 1600), "JPEG"), "image/jpeg")
    url = prepare_data_url(big, "auto", TO_224, "The image")
    assert url.startswith("data:image/jpeg;base64,") and len(url) < len(big) // 10
    small = data_url(encode(halves(224, 224), "PNG"))
    assert prepare_data_url(small, "auto", TO_224, "The image") is small
    fetched = encode(halves(1000, 1000), "PNG")
    assert prepare_bytes_url(fetched, "auto", TO_224, "The image").startswith("data:image/jpeg")


def test_without_resize_nothing_is_shrunk():
    data = encode(halves(2400, 1600), "JPEG")
    assert prepare_for_model(data, "auto", ImageLimits()).data is None


def test_the_spool_gets_the_bytes_a_data_url_would_carry(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    big, small = tmp_path / "big.jpg", tmp_path / "small.png"
    big.write_bytes(encode(halves(1200, 800), "JPEG"))
    small.write_bytes(encode(halves(100, 60), "PNG"))
    for source in (big, small):
        spooled = prepare_file_to_spool(str(source), TO_224, "The image", str(spool))
        url = prepare_file_url(str(source), TO_224, "The image")
        assert Path(spooled).read_bytes() == base64.b64decode(url.partition(",")[2])
        assert spooled.startswith(str(spool))
    assert Path(spooled).read_bytes() == small.read_bytes()  # model-sized: as it is
    with pytest.raises(ImageError):
        (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
        prepare_file_to_spool(str(tmp_path / "bad.jpg"), TO_224, "The image", str(spool))
    assert len(list(spool.iterdir())) == 2  # nothing left behind by the refused one
