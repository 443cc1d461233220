"""What a chat request means to BLIP-2: prompt mapping, the one-image rule, refused fields and
image decoding errors. Pure functions, no model."""

from __future__ import annotations

import pytest

from tests.support.images import data_url, image_message, png_bytes, png_data_url
from vlm_gateway.backends.blip2.request import (
    build_prompt,
    check_supported,
    decode_image,
    sampling_options,
)
from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.protocol import ChatCompletionRequest

IMAGE = png_data_url()


def request(messages: list[dict], **fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages, **fields})


def prompt_text(messages: list[dict], **fields) -> str:
    return build_prompt(request(messages, **fields)).text


def test_image_without_text_is_plain_captioning():
    assert prompt_text([image_message(None, IMAGE)]) == ""


def test_user_text_becomes_a_question():
    assert prompt_text([image_message("What is it?", IMAGE)]) == "Question: What is it? Answer:"


def test_turns_are_concatenated_as_questions_and_answers():
    messages = [
        image_message("What is it?", IMAGE),
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "What colour?"},
    ]
    assert (
        prompt_text(messages)
        == "Question: What is it? Answer: a cat Question: What colour? Answer:"
    )


def test_an_earlier_caption_turn_contributes_its_answer_alone():
    messages = [
        image_message(None, IMAGE),
        {"role": "assistant", "content": "a cat on a sofa"},
        {"role": "user", "content": "What colour is the sofa?"},
    ]
    assert prompt_text(messages) == "a cat on a sofa Question: What colour is the sofa? Answer:"


def test_consecutive_user_messages_are_one_turn():
    messages = [image_message(None, IMAGE), {"role": "user", "content": "Where is it?"}]
    assert prompt_text(messages) == "Question: Where is it? Answer:"


def test_continue_final_message_is_prompted_captioning():
    messages = [image_message(None, IMAGE), {"role": "assistant", "content": "a photo of"}]
    prompt = build_prompt(request(messages, continue_final_message=True))
    assert prompt.text == "a photo of"
    assert prompt.continues_text


def test_continue_final_message_needs_a_final_assistant_message():
    with pytest.raises(InvalidRequestError) as caught:
        build_prompt(request([image_message("hi", IMAGE)], continue_final_message=True))
    assert caught.value.param == "continue_final_message"


def test_system_messages_are_ignored_and_noted():
    messages = [{"role": "system", "content": "Be terse."}, image_message("What?", IMAGE)]
    prompt = build_prompt(request(messages))
    assert prompt.text == "Question: What? Answer:"
    assert prompt.ignored_system


@pytest.mark.parametrize("images", [0, 2])
def test_exactly_one_image(images):
    parts = [{"type": "image_url", "image_url": {"url": IMAGE}}] * images
    parts.append({"type": "text", "text": "hi"})
    with pytest.raises(InvalidRequestError) as caught:
        build_prompt(request([{"role": "user", "content": parts}]))
    assert "exactly one image" in caught.value.message
    assert f"has {images}" in caught.value.message


def test_last_message_must_be_the_user():
    messages = [image_message("hi", IMAGE), {"role": "assistant", "content": "hello"}]
    with pytest.raises(InvalidRequestError, match="last message"):
        build_prompt(request(messages))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
        ),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"top_k": 5}, "top_k"),
    ],
)
def test_fields_blip2_cannot_honour_are_refused_by_name(fields, param):
    with pytest.raises(InvalidRequestError) as caught:
        check_supported(request([image_message("hi", IMAGE)], **fields))
    assert caught.value.param == param
    assert param in caught.value.message


def test_sampling_defaults_and_seeds_per_choice():
    sampling = sampling_options(request([image_message("hi", IMAGE)], n=3, seed=10, stop="x"), 400)
    assert sampling.temperature == 0.0  # greedy unless asked
    assert sampling.seeds == (10, 11, 12)
    assert sampling.stop == ("x",)
    assert sampling.max_tokens is None


def test_logit_bias_token_ids_are_checked():
    with pytest.raises(InvalidRequestError) as caught:
        sampling_options(request([image_message("hi", IMAGE)], logit_bias={"999": 5}), 400)
    assert caught.value.param == "logit_bias"


def test_a_valid_data_url_decodes_to_rgb():
    image = decode_image(png_data_url(12, 7), "p")
    assert (image.mode, image.size) == ("RGB", (12, 7))


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://example.com/cat.png", "data: URLs"),
        ("data:image/png;base64,@@@", "not valid base64"),
        ("data:text/plain;base64,aGk=", "must look like"),
        (data_url(b"not an image at all"), "could not be decoded"),
        (data_url(png_bytes()[:40]), "could not be decoded"),
    ],
)
def test_bad_images_are_400s_in_our_own_words(url, words):
    with pytest.raises(InvalidRequestError) as caught:
        decode_image(url, "messages[0].content[0].image_url.url")
    assert words in caught.value.message
    assert caught.value.param == "messages[0].content[0].image_url.url"
    assert "PIL" not in caught.value.message and "0x" not in caught.value.message
