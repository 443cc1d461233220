"""Images through a real gateway process, driven by the official SDK: what the upstream receives
(always a data URL, byte for byte when nothing changes), and the 400s clients see."""

from __future__ import annotations

import base64
import io
import logging
import re

import httpx
import openai
import orjson
import pytest
from PIL import Image

from tests.support.fake_upstream import FakeUpstream
from tests.support.image_server import ImageServer
from tests.support.images import data_url, image_message, png_bytes, png_data_url
from tests.support.processes import GatewayProcess
from vlm_gateway.core.chat_body import LONG_DATA_URL_BYTES
from vlm_gateway.server.door.log_redaction import RedactBase64

PNG = png_bytes(40, 40)
BIG = png_bytes(1024, 256, seed=3)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    work = tmp_path_factory.mktemp("gateway-images")
    with FakeUpstream() as upstream, ImageServer({"/cat.png": PNG, "/big.png": BIG}) as images:
        config = {
            "data_dir": str(work / "data"),
            "images": {"allowed_networks": ["127.0.0.1/32"]},  # the loopback image server only
            "models": [
                {
                    "name": "m",
                    "backend": "openai",
                    "base_url": upstream.base_url,
                    "upstream_model": "ok",
                },
                {
                    "name": "single",
                    "backend": "openai",
                    "base_url": upstream.base_url,
                    "upstream_model": "ok",
                    "images": {"max_images": 1},
                },
            ],
        }
        gateway = GatewayProcess(config, work).start()
        try:
            yield gateway, upstream, images
        finally:
            gateway.stop()


@pytest.fixture
def client(servers):
    gateway, upstream, _ = servers
    upstream.clear()
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)


def forwarded_urls(upstream: FakeUpstream) -> list[str]:
    content = upstream.requests[-1]["messages"][0]["content"]
    return [part["image_url"]["url"] for part in content if part["type"] == "image_url"]


def test_a_data_url_reaches_the_upstream_byte_for_byte(servers, client):
    url = png_data_url(40, 40)
    client.chat.completions.create(model="m", messages=[image_message("what?", url)])
    assert forwarded_urls(servers[1]) == [url]


def test_unknown_fields_beside_an_image_reach_the_upstream_unchanged(servers, client):
    """vLLM's own parameters (top level, nested, on a message) next to a data URL image: the
    upstream gets the body as the client sent it, only `model` swapped for the upstream's."""
    url = png_data_url(200, 200, seed=5)
    message = {**image_message("what?", url), "vllm_note": {"keep": [1, 2.5, None, "é", True]}}
    extra = {
        "top_k": 3,
        "min_p": 0.1,
        "repetition_penalty": 1.05,
        "mm_processor_kwargs": {"max_pixels": 50176, "nested": {"deep": [0, {"x": -1}]}},
        "vllm_xargs": {"a": "b"},
    }
    client.chat.completions.create(model="m", messages=[message], max_tokens=1, extra_body=extra)
    sent = {"model": "ok", "messages": [message], "max_tokens": 1, **extra}
    assert servers[1].requests[-1] == sent


def post_raw(gateway: GatewayProcess, body: bytes) -> httpx.Response:
    """As a client whose JSON encoder is not ours (the SDK's would not write these bytes)."""
    headers = {"content-type": "application/json", "authorization": "Bearer x"}
    return httpx.post(gateway.url + "/v1/chat/completions", content=body, headers=headers)


def test_a_long_data_url_with_escaped_slashes_reaches_the_upstream_unescaped(servers, client):
    """PHP's json_encode writes `image\\/png`: the gateway's fast parse of long data URLs
    (core/chat_body.py) must read it as JSON does."""
    url = png_data_url(200, 200, seed=6)
    body = orjson.dumps({"model": "m", "messages": [image_message("what?", url)]})
    answer = post_raw(servers[0], body.replace(b"data:image/png", b"data:image\\/png"))
    assert answer.status_code == 200, answer.text
    assert forwarded_urls(servers[1]) == [url]


def test_long_data_urls_forwarded_as_sent_beside_one_the_gateway_corrected(servers, client):
    """The first two go on as the client's own bytes (core/chat_body.py), the third with its
    declared type corrected, so serialised anew."""
    kept, also_kept = png_data_url(200, 200, seed=8), png_data_url(200, 200, seed=9)
    corrected = png_data_url(200, 200, seed=10)
    mislabelled = corrected.replace("image/png", "image/jpeg", 1)
    assert min(map(len, (kept, also_kept, corrected))) > LONG_DATA_URL_BYTES
    message = image_message("what?", kept)
    message["content"] += [
        {"type": "image_url", "image_url": {"url": url}} for url in (also_kept, mislabelled)
    ]
    answer = post_raw(servers[0], orjson.dumps({"model": "m", "messages": [message]}))
    assert answer.status_code == 200, answer.text
    assert forwarded_urls(servers[1]) == [kept, also_kept, corrected]


def test_a_control_character_inside_a_long_data_url_is_a_400_not_forwarded(servers, client):
    url = png_data_url(200, 200, seed=7)
    body = orjson.dumps({"model": "m", "messages": [image_message("what?", url)]})
    answer = post_raw(servers[0], body.replace(b";base64,iVBOR", b";base64,iV\x01BOR"))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_base64"
    assert servers[1].requests == []


def test_an_http_image_is_fetched_and_forwarded_as_a_data_url(servers, client):
    _, upstream, images = servers
    client.chat.completions.create(
        model="m", messages=[image_message("what?", images.url("/cat.png"))], stream=False
    )
    assert forwarded_urls(upstream) == [data_url(PNG)]


def test_detail_low_reaches_the_upstream_downscaled(servers, client):
    _, upstream, images = servers
    part = {"type": "image_url", "image_url": {"url": images.url("/big.png"), "detail": "low"}}
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": [part]}])
    forwarded = forwarded_urls(upstream)[0]
    image = Image.open(io.BytesIO(base64.b64decode(forwarded.partition(",")[2])))
    assert image.size == (512, 128)


@pytest.mark.parametrize(
    "target,reason",
    [
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://10.0.0.1/admin.png", "private"),
        ("file:///etc/passwd", "Invalid image URL"),
    ],
)
def test_a_redirect_to_an_internal_address_is_a_400_and_nothing_is_forwarded(
    servers, client, target, reason
):
    _, upstream, images = servers
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="m", messages=[image_message("x", images.url(f"/redirect?to={target}"))]
        )
    assert reason in caught.value.message
    assert caught.value.param == "messages[0].content[0].image_url.url"
    assert upstream.requests == []


def test_too_many_images_is_a_400_naming_the_limit(servers, client):
    two = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": png_data_url()}},
            {"type": "image_url", "image_url": {"url": png_data_url(seed=2)}},
        ],
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="single", messages=[two])
    assert caught.value.code == "too_many_images" and "at most 1 image(s)" in caught.value.message
    assert servers[1].requests == []


def test_a_bad_image_gives_our_words_and_the_payload_never_reaches_the_log(servers, client):
    junk = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 400).decode()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="m", messages=[image_message("x", f"data:image/png;base64,{junk}")]
        )
    assert "truncated or corrupt" in caught.value.message
    assert junk[:200] not in caught.value.message
    assert not re.search(r"[A-Za-z0-9+/]{200,}", servers[0].log())


def test_the_log_filter_replaces_base64_payloads_with_their_size(caplog):
    payload = base64.b64encode(bytes(3000)).decode()
    record = logging.LogRecord(
        "t",
        logging.WARNING,
        __file__,
        1,
        "upstream said: %s",
        (f"bad image data:image/png;base64,{payload}",),
        None,
    )
    RedactBase64().filter(record)
    assert (
        record.getMessage()
        == "upstream said: bad image data:image/png;base64,<base64, 4000 characters>"
    )
