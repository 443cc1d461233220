"""`input_modalities`: an image sent to a text-only model is a 400 naming the part, before any
fetch, on every API that takes images (chat, Responses, Anthropic Messages)."""

import httpx
import pytest

from tests.support.image_server import ImageServer
from tests.support.images import png_bytes
from tests.support.processes import GatewayProcess
from tests.support.status_upstream import StatusUpstream
from vlm_gateway.backends.vllm.settings import VllmBackendSettings


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("modalities")
    with StatusUpstream() as upstream, ImageServer({"/cat.png": png_bytes(8, 8)}) as images:
        entry = {"backend": "openai", "base_url": upstream.base_url}
        config = {
            "data_dir": str(work / "data"),
            "images": {"allowed_networks": ["127.0.0.1/32"]},
            "models": [
                {"name": "text-only", "input_modalities": ["text"], **entry},
                {"name": "vision", **entry},
            ],
        }
        with GatewayProcess(config, work).start() as process:
            yield process, upstream, images


def test_the_model_cards_say_what_each_model_takes(gateway):
    process, _upstream, _images = gateway
    cards = httpx.get(process.url + "/v1/models").json()["data"]
    taken = {card["id"]: card["vlm_gateway"]["input_modalities"] for card in cards}
    assert taken == {"text-only": ["text"], "vision": ["text", "image"]}


def chat_body(model: str, url: str) -> dict:
    parts = [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": model, "messages": [{"role": "user", "content": parts}]}


def messages_body(url: str) -> dict:
    blocks = [
        {"type": "text", "text": "what?"},
        {"type": "image", "source": {"type": "url", "url": url}},
    ]
    return {
        "model": "text-only",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": blocks}],
    }


def responses_body(url: str) -> dict:
    parts = [{"type": "input_text", "text": "what?"}, {"type": "input_image", "image_url": url}]
    return {"model": "text-only", "input": [{"role": "user", "content": parts}]}


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/chat/completions", lambda url: chat_body("text-only", url), "messages[0].content[1]"),
        ("/v1/messages", messages_body, "messages[0].content[1]"),
        ("/v1/responses", responses_body, "input[0].content[1]"),
    ],
)
def test_an_image_for_a_text_only_model_is_a_400_before_any_fetch(gateway, path, body, param):
    process, upstream, images = gateway
    posts, hits = upstream.posts, images.hits["/cat.png"]
    reply = httpx.post(process.url + path, json=body(images.url("/cat.png")))
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and "text only" in error["message"]
    # Anthropic's envelope has no `param`: the field leads its message.
    assert error.get("param", error["message"]).startswith(param)
    assert images.hits["/cat.png"] == hits and upstream.posts == posts


def test_a_vision_model_takes_the_same_image(gateway):
    process, _upstream, images = gateway
    reply = httpx.post(
        process.url + "/v1/chat/completions", json=chat_body("vision", images.url("/cat.png"))
    )
    assert reply.status_code == 200 and images.hits["/cat.png"] >= 1


def test_managed_vllm_reads_the_modalities_from_the_model_config(tmp_path):
    def entry(config_json: str | None, **extra) -> VllmBackendSettings:
        model = tmp_path / f"model-{len(list(tmp_path.iterdir()))}"
        model.mkdir()
        if config_json is not None:
            (model / "config.json").write_text(config_json)
        return VllmBackendSettings(name="x", backend="vllm", model=str(model), **extra)

    assert entry('{"model_type": "llama"}').modalities() == ("text",)
    assert entry('{"model_type": "llava", "vision_config": {}}').modalities() == ("text", "image")
    assert entry(None).modalities() == ("text", "image")  # unknown: not refused
    assert entry('{"model_type": "llama"}', input_modalities=["text", "image"]).modalities() == (
        "text",
        "image",
    )
