"""What the resolver tells its observer (the app's metrics): each accepted image with its
source, size, fetch and decode time, and each refusal with its error code."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from tests.images.test_resolve import request
from tests.support.image_server import ImageServer
from tests.support.images import data_url, png_bytes
from tests.support.settings import two_upstreams
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.image_errors import ImageError
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.images.fetch import ImageFetcher
from vlm_gateway.images.resolve import ImageResolver

PNG = png_bytes(32, 32)


@dataclass
class Recorder:
    resolved: list[tuple[str, str, int, float | None, float]] = field(default_factory=list)
    refused: list[tuple[str, str | None]] = field(default_factory=list)

    def image_resolved(
        self,
        model: str,
        source: str,
        size_bytes: int,
        fetch_seconds: float | None,
        decode_seconds: float,
    ) -> None:
        self.resolved.append((model, source, size_bytes, fetch_seconds, decode_seconds))

    def image_refused(self, model: str, code: str | None) -> None:
        self.refused.append((model, code))


def observe(config: GatewaySettings, body: ChatCompletionRequest) -> Recorder:
    recorder = Recorder()

    async def run() -> None:
        fetcher = ImageFetcher(config.images)
        resolver = ImageResolver(config.images, config.image_limits, fetcher, recorder)
        try:
            await resolver.resolve(body)
        except ImageError:
            pass
        finally:
            await fetcher.aclose()

    asyncio.run(run())
    return recorder


@pytest.mark.parametrize("extra", [0, 1, 2])  # lengths that end base64 with each padding
def test_data_urls_report_their_decoded_size_and_no_fetch(extra):
    image = PNG + b"\0" * extra
    recorder = observe(two_upstreams(), request("wide", data_url(image)))
    [(model, source, size, fetch_s, decode_s)] = recorder.resolved
    assert (model, source, size, fetch_s) == ("wide", "data", len(image), None)
    assert decode_s >= 0
    assert recorder.refused == []


def test_http_images_report_size_and_fetch_time():
    with ImageServer({"/cat.png": PNG}) as server:
        config = two_upstreams(allow_private_networks=True)
        recorder = observe(config, request("wide", server.url("/cat.png")))
    [(model, source, size, fetch_s, decode_s)] = recorder.resolved
    assert (model, source, size) == ("wide", "http", len(PNG))
    assert fetch_s is not None and fetch_s >= 0 and decode_s >= 0


def test_refusals_report_the_error_code():
    blocked = observe(two_upstreams(), request("wide", "http://127.0.0.1:9/cat.png"))
    assert blocked.refused == [("wide", "image_url_blocked")]
    too_many = observe(two_upstreams(), request("one", data_url(PNG), data_url(PNG)))
    assert too_many.refused == [("one", "too_many_images")]
    assert too_many.resolved == []
