"""A custom-code model (trust_remote_code) outside transformers' image-text-to-text mapping,
served through its own MiniCPM-V-style `chat(msgs=..., tokenizer=...)`: the tiny model the
conftest writes (config.json `auto_map` + modeling code, loaded offline), through the real
gateway and the official openai SDK. Its answers are deterministic: `answer_for` says them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.backends.transformers.conftest import CUSTOM, CUSTOM_SYSTEM
from tests.support.custom_code_model import answer_for
from tests.support.images import png_data_url

pytest.importorskip("torch")

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def client(tf_gateway):
    return openai.OpenAI(base_url=tf_gateway.url + "/v1", api_key="unused", max_retries=0)


def user(*sizes: tuple[int, int], text: str = QUESTION) -> dict:
    parts: list[dict] = [
        {"type": "image_url", "image_url": {"url": png_data_url(width, height, seed)}}
        for seed, (width, height) in enumerate(sizes)
    ]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def ask(client, messages: list, **fields):
    return client.chat.completions.create(model=CUSTOM, messages=messages, **fields)


def test_json_answer_comes_from_the_models_chat(client):
    answer = ask(client, [user((40, 30), (24, 36))], temperature=0)
    expected = answer_for([(40, 30), (24, 36)], QUESTION, system=CUSTOM_SYSTEM)
    choice = answer.choices[0]
    assert choice.message.content == expected  # both images, in order, and the system prompt
    assert choice.finish_reason == "stop"
    assert answer.usage.completion_tokens >= len(expected.split(" "))
    assert answer.usage.prompt_tokens >= len(QUESTION.split(" "))  # the text's tokens


def test_max_tokens_cuts_the_answer_and_says_length(client):
    answer = ask(client, [user((40, 30))], max_tokens=3, temperature=0)
    expected = answer_for([(40, 30)], QUESTION, max_words=3, system=CUSTOM_SYSTEM)
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 3


def test_a_sampled_stream_comes_in_the_models_pieces(client):
    expected = answer_for([(40, 30)], QUESTION, system=CUSTOM_SYSTEM)
    stream = ask(
        client,
        [user((40, 30))],
        temperature=0.7,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == expected
    assert len(pieces) > 1  # as `chat(stream=True)` yields them
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_a_greedy_stream_is_the_whole_answer_in_one_piece(client):
    """MiniCPM-V streams only when sampling: a greedy answer comes whole."""
    stream = ask(client, [user((40, 30))], temperature=0, stream=True)
    pieces = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert pieces == [answer_for([(40, 30)], QUESTION, system=CUSTOM_SYSTEM)]


def test_a_stop_string_cuts_streamed_and_json_answers(client):
    whole = answer_for([(40, 30)], QUESTION, system=CUSTOM_SYSTEM)
    cut = whole[: whole.index(" asked")]
    answer = ask(client, [user((40, 30))], temperature=0, stop=[" asked"])
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == (cut, "stop")
    stream = ask(client, [user((40, 30))], temperature=0.5, stop=[" asked"], stream=True)
    pieces = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == cut


def test_multi_turn_and_a_system_message_map_onto_msgs(client):
    messages = [
        {"role": "system", "content": "Be terse."},
        user((40, 30)),
        {"role": "assistant", "content": "A square."},
        {"role": "user", "content": "And its colour?"},
    ]
    answer = ask(client, messages, temperature=0).choices[0].message.content
    # The request's system message replaces the configured one; the image stays in turn one.
    assert answer == answer_for([(40, 30)], "And its colour?", system="Be terse.")


def test_an_assistant_turn_first_is_a_400(client):
    messages = [{"role": "assistant", "content": "Hello."}, user((40, 30))]
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, messages)
    assert caught.value.body["param"] == "messages"


def test_concurrent_requests_are_answered_one_at_a_time_each_its_own(client):
    sizes = [(40, 30), (24, 36), (32, 32), (50, 20)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda size: ask(client, [user(size)], temperature=0), sizes))
    expected = [answer_for([size], QUESTION, system=CUSTOM_SYSTEM) for size in sizes]
    assert [a.choices[0].message.content for a in answers] == expected


def test_models_list_says_device_and_parameters(tf_gateway):
    models = httpx.get(tf_gateway.url + "/ready", timeout=5).json()["models"]
    replica = models[CUSTOM]["replicas"][0]
    assert replica["backend"] == "transformers" and replica["parameters"] == 16  # one 4x4 weight
    assert replica["device"] and replica["dtype"] == "float32"


def test_trust_remote_code_on_a_mapped_model_keeps_the_batched_path(tiny_models):
    """trust_remote_code does not send a model transformers knows through `chat`."""
    from vlm_gateway.backends.transformers.custom_chat_model import load
    from vlm_gateway.backends.transformers.settings import TransformersBackendSettings

    entry = TransformersBackendSettings(
        name="joy",
        backend="transformers",
        model=str(tiny_models["llava-joycaption"]),
        trust_remote_code=True,
    )
    assert load(entry) is None
