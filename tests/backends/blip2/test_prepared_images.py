"""The in-process BLIP-2 gets images prepared in the gateway's process pool: greedy captions are
the same as with images prepared without the pool, and a model-sized image is left alone (the
same caption as a model that does not resize at all). Tiny random BLIP-2 on a real server."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image

from tests.backends.blip2.test_backend import _wait_until_loaded
from tests.support.images import data_url, image_message, png_bytes
from tests.support.processes import GatewayProcess
from tests.support.torch_device import TEST_DEVICE
from vlm_gateway.images.decode import ImageLimits
from vlm_gateway.images.prepare import prepare_bytes_url

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def client(tiny_models, workdir):
    """`pooled`: the tiny BLIP-2 as configured by default (resize auto: its 30x30, in the
    pool); `asis`: the same weights with `resize: none`."""
    entry = {"backend": "blip2", "model": str(tiny_models["blip2"]), "device": TEST_DEVICE}
    config = {
        "images": {"prepare_workers": 2},
        "models": [
            {**entry, "name": "pooled"},
            {**entry, "name": "asis", "images": {"resize": "none"}},
        ],
    }
    with GatewayProcess(config, workdir).start(wait_ready=False) as process:
        for name in ("pooled", "asis"):
            _wait_until_loaded(process.url, name)
        yield openai.OpenAI(base_url=process.url + "/v1", api_key="unused", max_retries=0)


def caption(client, model: str, url: str) -> str:
    answer = client.chat.completions.create(
        model=model, messages=[image_message(None, url)], max_tokens=12, temperature=0
    )
    return answer.choices[0].message.content


# Pixel noise: the tiny random model's greedy caption follows such images closely (a JPEG
# quality of 85 instead of 90 changes most of these captions; smooth images all get one).


def test_captions_are_the_same_with_and_without_the_pool(client):
    for seed in range(5):
        large = png_bytes(90, 60, seed=seed)
        # Prepared here in a plain call (no pool) for the model's 30x30, sent to `asis`.
        unpooled = prepare_bytes_url(large, "auto", ImageLimits(resize=(30, 30)), "The image")
        assert Image.open(io.BytesIO(_decoded(unpooled))).size == (45, 30)
        assert caption(client, "pooled", data_url(large)) == caption(client, "asis", unpooled)


def test_a_model_sized_image_is_left_alone(client):
    for seed in range(5):
        sized = data_url(png_bytes(30, 30, seed=seed))
        assert caption(client, "pooled", sized) == caption(client, "asis", sized)


def _decoded(url: str) -> bytes:
    return base64.b64decode(url.partition(",")[2])
