"""Bad input to `backend: transformers`, through the real gateway and the official openai SDK:
each is a 4xx naming the field or the part, before anything is generated, and the model keeps
serving."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.backends.transformers.conftest import MAX_IMAGES, MODELS
from tests.support.images import png_data_url

pytest.importorskip("torch")

NAMES = list(MODELS.values())


@pytest.fixture(scope="module")
def client(tf_gateway):
    return openai.OpenAI(base_url=tf_gateway.url + "/v1", api_key="unused", max_retries=0)


def image(seed: int = 0, width: int = 30, height: int = 30) -> dict:
    return {"type": "image_url", "image_url": {"url": png_data_url(width, height, seed)}}


def ask(client, name: str, content: list, **fields):
    fields.setdefault("max_tokens", 4)
    return client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": content}], temperature=0, **fields
    )


def sequences(tf_gateway, name: str) -> int:
    models = httpx.get(tf_gateway.url + "/ready", timeout=5).json()["models"]
    return models[name]["replicas"][0]["sequences"]


@pytest.mark.parametrize("stream", [False, True])
def test_an_image_the_processor_refuses_is_a_400_naming_its_part(client, tf_gateway, stream):
    # Qwen2-VL's processor raises on an image more than 200 times wider than tall.
    name = MODELS["qwen2vl"]
    content = [image(1), {"type": "text", "text": "Compare."}, image(2, width=1608, height=8)]
    before = sequences(tf_gateway, name)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, name, content, stream=stream)
    assert caught.value.body["param"] == "messages[0].content[2]"
    assert caught.value.code == "invalid_image"
    assert "aspect ratio must be smaller than 200" in caught.value.message
    assert sequences(tf_gateway, name) == before  # nothing was generated
    assert ask(client, name, content[:2]).choices[0].message.content is not None


@pytest.mark.parametrize("name", NAMES)
def test_more_images_than_the_model_takes_is_a_400_naming_the_first_extra(client, name):
    content = [image(seed) for seed in range(MAX_IMAGES + 1)]
    content.insert(1, {"type": "text", "text": "Compare them."})
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, name, content)
    assert caught.value.code == "too_many_images"
    assert caught.value.body["param"] == f"messages[0].content[{MAX_IMAGES + 1}]"
    assert f"at most {MAX_IMAGES} image(s)" in caught.value.message
    assert ask(client, name, content[:-1]).usage.completion_tokens >= 1  # the limit is allowed


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"top_logprobs": 2, "logprobs": True}, "logprobs"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"extra_body": {"continue_final_message": True}}, "continue_final_message"),
        ({"extra_body": {"min_p": 0.1}}, "min_p"),
    ],
)
def test_an_unsupported_field_is_a_400_naming_it(client, name, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, name, [image(), {"type": "text", "text": "Hi."}], **fields)
    assert caught.value.body["param"] == param
    assert param in caught.value.message


@pytest.mark.parametrize("name", NAMES)
def test_a_prompt_longer_than_the_context_is_a_400_with_the_counts(client, tf_gateway, name):
    before = sequences(tf_gateway, name)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, name, [image(), {"type": "text", "text": "word " * 600}])
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.body["param"] == "messages"
    message = caught.value.message
    assert "maximum context length is 512 tokens" in message  # the tiny models' positions
    assert "in the messages, their images' tokens included" in message
    # An answer that would run past the context is refused the same way, with its counts.
    short = ask(client, name, [image(), {"type": "text", "text": "Hi."}])
    prompt = short.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, name, [image(), {"type": "text", "text": "Hi."}], max_tokens=513 - prompt)
    assert caught.value.code == "context_length_exceeded"
    assert f"you requested 513 tokens ({prompt} in the messages" in caught.value.message
    assert sequences(tf_gateway, name) == before + 1  # only the short one was generated
