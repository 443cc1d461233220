"""Walking a chat request's image parts: per-model limits, local media files, errors naming
the part."""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.support.image_server import ImageServer
from tests.support.images import png_bytes, png_data_url
from tests.support.settings import two_upstreams
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.image_errors import ImageError
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.images.fetch import ImageFetcher
from vlm_gateway.images.resolve import ImageResolver

PNG = png_bytes(32, 32)


settings = two_upstreams


def request(model: str, *urls: str, detail: str = "auto") -> ChatCompletionRequest:
    parts = [{"type": "image_url", "image_url": {"url": url, "detail": detail}} for url in urls]
    return ChatCompletionRequest.model_validate(
        {
            "model": model,
            "messages": [
                {"role": "user", "content": parts + [{"type": "text", "text": "describe"}]}
            ],
        }
    )


def resolve(config: GatewaySettings, body: ChatCompletionRequest) -> ChatCompletionRequest:
    async def run() -> None:
        fetcher = ImageFetcher(config.images)
        try:
            await ImageResolver(config.images, config.image_limits, fetcher).resolve(body)
        finally:
            await fetcher.aclose()

    asyncio.run(run())
    return body


def urls_of(body: ChatCompletionRequest) -> list[str]:
    return [part.image_url.url for part in body.messages[0].content if part.type == "image_url"]


def refusal(config: GatewaySettings, body: ChatCompletionRequest) -> ImageError:
    with pytest.raises(ImageError) as caught:
        resolve(config, body)
    assert caught.value.status_code == 400
    return caught.value


def test_too_many_images_names_the_models_limit():
    error = refusal(settings(), request("one", png_data_url(), png_data_url(seed=1)))
    assert "at most 1 image(s)" in error.message and error.code == "too_many_images"
    assert error.param == "messages[0].content[1]"  # the first image past the limit


def test_the_failing_part_is_named_in_param():
    error = refusal(settings(), request("wide", png_data_url(), "data:image/png;base64,@@"))
    assert error.param == "messages[0].content[1].image_url.url"


def test_the_models_max_image_side_applies():
    body = resolve(settings(), request("one", png_data_url(200, 100)))
    assert urls_of(body)[0] != png_data_url(200, 100)


def test_unknown_models_are_left_for_the_router():
    body = request("nope", "gopher://x")
    assert urls_of(resolve(settings(), body)) == ["gopher://x"]


def test_http_images_become_data_urls():
    with ImageServer({"/cat.png": PNG}) as server:
        body = resolve(
            settings(allow_private_networks=True), request("wide", server.url("/cat.png"))
        )
    assert urls_of(body)[0].startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.png", "gopher://x/", "blob:abc", "/etc/passwd", "C:\\image.png"]
)
def test_other_schemes_are_refused(url):
    assert "Unsupported image URL" in refusal(settings(), request("wide", url)).message


def test_file_urls_are_refused_without_a_media_directory(tmp_path):
    (tmp_path / "cat.png").write_bytes(PNG)
    error = refusal(settings(), request("wide", f"file://{tmp_path}/cat.png"))
    assert "local_media_dir" in error.message


def test_file_urls_are_read_only_inside_the_media_directory(tmp_path):
    media, outside = tmp_path / "media", tmp_path / "secret"
    media.mkdir()
    outside.mkdir()
    (media / "cat.png").write_bytes(PNG)
    (outside / "key.png").write_bytes(PNG)
    os.symlink(outside / "key.png", media / "link.png")
    config = settings(local_media_dir=str(media))
    body = resolve(config, request("wide", f"file://{media}/cat.png"))
    assert urls_of(body)[0].startswith("data:image/png;base64,")
    for url in (
        f"file://{media}/../secret/key.png",
        f"file://{media}/link.png",
        f"file://{media}/%2e%2e/secret/key.png",
        f"file://{outside}/key.png",
        f"file://{media}/missing.png",
        f"file://{media}",
    ):
        assert "refused" in refusal(config, request("wide", url)).message, url
    assert "remote hosts" in refusal(config, request("wide", "file://server/share/a.png")).message
