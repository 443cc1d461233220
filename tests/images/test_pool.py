"""The preparation pool: real worker processes give the same bytes as the thread path, errors
come back in our words, and a worker that dies fails only its own image, not the pool."""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.images.test_decode import encode
from tests.images.test_prepare import TO_224, halves, jpeg_claiming
from vlm_gateway.core.image_errors import ImageError
from vlm_gateway.images.pool import ImagePreparer
from vlm_gateway.images.prepare import prepare_bytes_url

PHOTO = encode(halves(1200, 800), "JPEG")


async def prepare_with(preparer: ImagePreparer, data: bytes = PHOTO) -> str:
    return await preparer.run("The image", prepare_bytes_url, data, "auto", TO_224, "The image")


def with_preparer(workers: int | None, body):
    async def main():
        preparer = ImagePreparer(workers)
        try:
            return await body(preparer)
        finally:
            await preparer.aclose()

    return asyncio.run(main())


def test_the_pool_gives_the_same_bytes_as_a_thread():
    pooled = with_preparer(2, prepare_with)
    threaded = with_preparer(0, prepare_with)
    assert pooled == threaded and pooled.startswith("data:image/jpeg;base64,")


def test_errors_come_back_in_our_words():
    async def body(preparer):
        with pytest.raises(ImageError) as bomb:
            await prepare_with(preparer, jpeg_claiming(60_000, 60_000))
        with pytest.raises(ImageError) as other:
            await preparer.run("The image", int, "secret decoder text 0x7f00")
        return bomb.value, other.value

    bomb, other = with_preparer(2, body)
    assert bomb.code == "image_too_large" and bomb.status_code == 400
    assert "could not be prepared" in other.message and "secret" not in other.message


def test_a_dying_worker_fails_only_its_own_call_and_the_pool_goes_on():
    async def body(preparer):
        # The dying call goes in first, so the innocent ones are queued or running in the
        # same pool when it breaks.
        calls = [preparer.run("The bad image", os._exit, 3)]
        calls += [prepare_with(preparer) for _ in range(6)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        after = await prepare_with(preparer)  # later work: a new pool
        return preparer.rebuilds, results, after

    rebuilds, results, after = with_preparer(2, body)
    bad, innocent = results[0], results[1:]
    assert isinstance(bad, ImageError) and "stopped" in bad.message
    assert "The bad image" in bad.message
    assert all(isinstance(url, str) and url.startswith("data:image/jpeg") for url in innocent)
    assert rebuilds == 1 and after.startswith("data:image/jpeg")


def test_no_workers_means_a_thread_and_no_processes():
    async def body(preparer):
        url = await prepare_with(preparer)
        return url, preparer._executor

    url, executor = with_preparer(0, body)
    assert url.startswith("data:image/jpeg") and executor is None
