"""The resolver shrinks images for models whose `images.resize` asks for it, in the real
process pool, whatever the image's source; other models get their images as before."""

from __future__ import annotations

import asyncio
import base64
import io

from PIL import Image

from tests.images.test_decode import encode
from tests.images.test_prepare import halves
from tests.images.test_resolve import request, urls_of
from tests.support.image_server import ImageServer
from tests.support.images import data_url
from tests.support.settings import DEAD_UPSTREAM
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.image_errors import ImageError
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.images.fetch import ImageFetcher
from vlm_gateway.images.pool import ImagePreparer
from vlm_gateway.images.resolve import ImageResolver

PHOTO = encode(halves(1200, 800), "JPEG")


def config(**images) -> GatewaySettings:
    """`small` wants 112x112 inputs; `asis` takes images at their own size."""
    entry = {"backend": "openai", "base_url": DEAD_UPSTREAM}
    return settings_model().model_validate(
        {
            "images": {"allow_private_networks": True, **images},
            "models": [
                {**entry, "name": "small", "images": {"resize": "112x112"}},
                {**entry, "name": "asis"},
            ],
        }
    )


def resolve_all(settings: GatewaySettings, *bodies: ChatCompletionRequest) -> list:
    async def run():
        fetcher = ImageFetcher(settings.images)
        preparer = ImagePreparer(2)
        resolver = ImageResolver(settings.images, settings.image_limits, fetcher, None, preparer)
        try:
            return await asyncio.gather(
                *(resolver.resolve(body) for body in bodies), return_exceptions=True
            )
        finally:
            await preparer.aclose()
            await fetcher.aclose()

    return asyncio.run(run())


def size_of(url: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).size


def test_every_source_is_shrunk_for_a_model_that_resizes(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(PHOTO)
    settings = config(local_media_dir=str(tmp_path))
    with ImageServer({"/photo.jpg": PHOTO}) as server:
        sources = [data_url(PHOTO, "image/jpeg"), server.url("/photo.jpg")]
        sources.append(f"file://{tmp_path}/photo.jpg")
        small = request("small", *sources)
        asis = request("asis", data_url(PHOTO, "image/jpeg"))
        assert resolve_all(settings, small, asis) == [3, 1]  # image counts: no error
    assert [size_of(url) for url in urls_of(small)] == [(168, 112)] * 3
    assert urls_of(asis) == [data_url(PHOTO, "image/jpeg")]  # forwarded byte for byte


def test_a_corrupt_image_is_a_400_naming_its_part():
    truncated = PHOTO[: len(PHOTO) // 2]
    body = request("small", data_url(PHOTO, "image/jpeg"), data_url(truncated, "image/jpeg"))
    [error] = resolve_all(config(), body)
    assert isinstance(error, ImageError) and error.status_code == 400
    assert error.param == "messages[0].content[1].image_url.url"
    assert "truncated or corrupt" in error.message
