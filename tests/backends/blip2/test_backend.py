"""The blip2 backend through the real gateway server, driven by the official openai SDK, on the
tiny random BLIP-2 (its words are noise: these tests check shapes, counts and determinism)."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.support.images import image_message, png_data_url
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess
from tests.support.torch_device import TEST_DEVICE

pytest.importorskip("torch")

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def gateway(tiny_models, workdir, tmp_path_factory):
    """One gateway: the tiny BLIP-2, and a blip2 model whose weights are missing."""
    config = {
        "models": [
            {
                "name": "tiny-blip2",
                "backend": "blip2",
                "model": str(tiny_models["blip2"]),
                "device": TEST_DEVICE,
                "max_batch_size": 16,
                "batch_wait_ms": 50,
            },
            {
                "name": "broken-blip2",
                "backend": "blip2",
                "model": str(tmp_path_factory.mktemp("no-weights")),
            },
        ]
    }
    with GatewayProcess(config, workdir).start(wait_ready=False) as process:
        _wait_until_loaded(process.url, "tiny-blip2")
        yield process


def _wait_until_loaded(url: str, name: str, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        models = httpx.get(url + "/ready", timeout=5).json()["models"]
        if models[name]["ready"]:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{name} did not load in {deadline_s} s")


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["blip2"])


def ask(client, text: str | None = QUESTION, seed_image: int = 1, **fields):
    messages = fields.pop("messages", None) or [image_message(text, png_data_url(seed=seed_image))]
    return client.chat.completions.create(model="tiny-blip2", messages=messages, **fields)


def replica(gateway, name: str = "tiny-blip2") -> dict:
    return httpx.get(gateway.url + "/ready", timeout=5).json()["models"][name]["replicas"][0]


# -- answers ---------------------------------------------------------------------------------


def test_captioning_counts_the_query_tokens_and_bos(client):
    answer = ask(client, None, max_tokens=8)
    assert answer.model == "tiny-blip2"
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.prompt_tokens == 4 + 1  # 4 query tokens, then BOS
    assert answer.usage.completion_tokens == 8
    assert answer.usage.total_tokens == 13


def test_vqa_prompt_tokens_and_the_answer_never_echoes_the_prompt(client, tokenizer):
    answer = ask(client, max_tokens=12)
    expected = 4 + len(tokenizer(f"Question: {QUESTION} Answer:")["input_ids"])
    assert answer.usage.prompt_tokens == expected
    assert answer.usage.completion_tokens == 12
    text = answer.choices[0].message.content
    assert text and "Question:" not in text and text == text.lstrip()


def test_multi_turn_is_question_answer_concatenation(client, tokenizer):
    messages = [
        image_message(QUESTION, png_data_url(seed=1)),
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "What colour?"},
    ]
    answer = ask(client, messages=messages, max_tokens=5)
    prompt = f"Question: {QUESTION} Answer: a cat Question: What colour? Answer:"
    assert answer.usage.prompt_tokens == 4 + len(tokenizer(prompt)["input_ids"])


def test_prompted_captioning_continues_the_prefix(client, tokenizer):
    messages = [
        image_message(None, png_data_url(seed=1)),
        {"role": "assistant", "content": "a photo of"},
    ]
    answer = ask(
        client, messages=messages, max_tokens=5, extra_body={"continue_final_message": True}
    )
    assert answer.usage.prompt_tokens == 4 + len(tokenizer("a photo of")["input_ids"])
    assert not answer.choices[0].message.content.startswith("a photo of")


def test_n_choices_are_sampled_apart_and_counted(client):
    answer = ask(client, n=2, temperature=1.0, seed=5, max_tokens=10)
    assert [c.index for c in answer.choices] == [0, 1]
    assert answer.choices[0].message.content != answer.choices[1].message.content
    assert answer.usage.completion_tokens == 20


def test_a_seed_reproduces_a_sample(client):
    first, again, other = (
        ask(client, temperature=1.0, top_p=0.9, seed=s, max_tokens=16) for s in (42, 42, 43)
    )
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content


def test_a_stop_string_cuts_the_text(client):
    full = ask(client, max_tokens=30).choices[0].message.content
    assert len(full) >= 6
    stop = full[3:5]
    cut = ask(client, max_tokens=30, stop=[stop])
    assert cut.choices[0].message.content == full[: full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_penalties_are_applied(client):
    plain = ask(client, max_tokens=30).choices[0].message.content
    penalised = ask(client, max_tokens=30, frequency_penalty=2.0).choices[0].message.content
    assert penalised != plain


def test_streaming_matches_the_plain_answer_with_usage_last(client):
    plain = ask(client, max_tokens=20)
    chunks = list(ask(client, max_tokens=20, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishing[-1] == "length" and finishing.count("length") == 1
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert len({c.id for c in chunks}) == 1
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # per token


def test_streaming_n2_has_both_indexes(client):
    chunks = list(ask(client, max_tokens=6, n=2, temperature=1.0, seed=1, stream=True))
    finished = {c.choices[0].index for c in chunks if c.choices[0].finish_reason}
    assert finished == {0, 1}


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("images", [0, 2])
def test_one_image_per_conversation(client, images):
    parts = [{"type": "image_url", "image_url": {"url": png_data_url()}}] * images
    parts.append({"type": "text", "text": "hi"})
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            ask(client, messages=[{"role": "user", "content": parts}], stream=stream)
        assert re.search(r"(exactly one|at most 1) image", caught.value.message)


def test_too_long_a_request_is_context_length_exceeded(client):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, max_tokens=500)
    assert caught.value.code == "context_length_exceeded"
    assert "512" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "word " * 600)
    assert caught.value.code == "context_length_exceeded"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                }
            },
            "response_format",
        ),
    ],
)
def test_unsupported_fields_are_named(client, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, **fields)
    assert caught.value.param == param


# (http URLs are fetched by the gateway before the backend sees them; the backend's own
# refusal of non-data URLs is unit-tested, as a test must not reach the internet.)
@pytest.mark.parametrize("url", ["data:image/png;base64,AAAA", "data:image/png;base64,@@"])
def test_unusable_images_are_400(client, url):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, messages=[image_message("hi", url)])
    assert caught.value.param == "messages[0].content[0].image_url.url"


def test_a_load_failure_is_reported_and_the_gateway_stays_up(gateway, client):
    broken = replica(gateway, "broken-blip2")
    assert broken["state"] == "failed"
    assert broken["reason"].startswith("cannot load")
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="broken-blip2", messages=[image_message(None, png_data_url())]
        )
    assert caught.value.status_code == 503
    assert ask(client, max_tokens=2).choices[0].message.content is not None


# -- batching --------------------------------------------------------------------------------


def _varied_requests(count: int) -> list[dict]:
    questions = [None, "What?", "What is on the left of the picture?", "Is it red or blue?"]
    return [
        {"text": questions[i % 4], "seed_image": i, "max_tokens": 5 + 3 * i, "temperature": 0}
        for i in range(count)
    ]


def test_batched_requests_answer_exactly_as_alone(gateway, client):
    requests = _varied_requests(12)
    alone = [ask(client, **r).choices[0].message.content for r in requests]
    before = replica(gateway)["largest_batch"]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: ask(client, **r).choices[0].message.content, requests))
    assert together == alone
    assert replica(gateway)["largest_batch"] > max(before, 1)


def test_health_answers_while_a_batch_generates(gateway, client, tokenizer):
    """Generation runs off the event loop: /health is answered between a batch's first token
    and its end. (The latency figure is tests/bench/bench_blip2_batching.py's.)"""
    before = replica(gateway)
    room = before["context_length"] - (4 + 1)  # 4 query tokens, then BOS
    no_eos = {str(token): -100 for token in {tokenizer.eos_token_id} - {None}}
    stream = ask(client, None, max_tokens=room, temperature=0, logit_bias=no_eos, stream=True)
    try:
        assert any(chunk.choices and chunk.choices[0].delta.content for chunk in stream)
        # The batch has begun: it produced a token, and it can only end at `room` tokens or
        # when this stream is closed. The event loop answers meanwhile...
        assert httpx.get(gateway.url + "/health", timeout=30).status_code == 200
        # ...before the batch ends: it is counted only when it ends, and a loop blocked by
        # the generation would have counted it before it could answer at all.
        assert replica(gateway)["batches"] == before["batches"]
    finally:
        stream.close()
    wait_until(
        lambda: replica(gateway)["batches"] == before["batches"] + 1,
        "the batch stopping once its only stream is closed",
    )
