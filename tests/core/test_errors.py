"""Validation failures become OpenAI-style 400s whose `param` names the field."""

import pytest
from pydantic import ValidationError

from vlm_gateway.core.errors import (
    ModelNotFoundError,
    ServiceUnavailableError,
    loc_to_param,
    validation_error_to_gateway,
)
from vlm_gateway.core.protocol import ChatCompletionRequest


@pytest.mark.parametrize(
    "loc, param",
    [
        (("messages",), "messages"),
        (("messages", 0, "user", "content"), "messages[0].content"),
        (("messages", 0, "user", "content", "str"), "messages[0].content"),
        (
            ("messages", 1, "user", "content", "list[...]", 0, "image_url", "image_url", "url"),
            "messages[1].content[0].image_url.url",
        ),
        (("stop", "list[str]"), "stop"),
        (("user",), "user"),
    ],
)
def test_loc_to_param(loc, param):
    assert loc_to_param(loc) == param


def first_error(body: str):
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate_json(body)
    return validation_error_to_gateway(info.value)


def test_missing_messages_names_the_field():
    error = first_error('{"model": "m"}')
    assert (error.status_code, error.param) == (400, "messages")
    assert error.envelope()["error"]["type"] == "invalid_request_error"
    assert "messages" in error.message


def test_invalid_json_is_a_400_without_param():
    error = first_error("{nope")
    assert (error.status_code, error.param) == (400, None)
    assert "not valid JSON" in error.message


def test_bad_nested_value_names_the_path():
    error = first_error('{"model": "m", "messages": [{"role": "user", "content": 5}]}')
    assert error.param == "messages[0].content"


def with_content(content: str) -> str:
    return '{"model": "m", "messages": [{"role": "user", "content": ' + content + "}]}"


def test_an_unknown_content_part_type_names_the_type_and_what_is_accepted():
    error = first_error(with_content('[{"type": "text", "text": "hi"}, {"type": "hologram"}]'))
    assert (error.status_code, error.param) == (400, "messages[0].content[1].type")
    assert "'hologram' is not a supported type" in error.message
    for accepted in ("text", "image_url", "video_url", "input_audio", "audio_url", "file"):
        assert f"'{accepted}'" in error.message
    assert "valid string" not in error.message  # not the string member's complaint


def test_a_video_part_without_its_url_names_the_missing_field():
    error = first_error(with_content('[{"type": "video_url"}]'))
    assert (error.status_code, error.param) == (400, "messages[0].content[0].video_url")
    assert "Missing required parameter" in error.message


def test_a_bad_value_inside_a_content_list_is_named_not_the_string_member():
    error = first_error(with_content('[{"type": "image_url", "image_url": {"url": 3}}]'))
    assert error.param == "messages[0].content[0].image_url.url"


def test_envelope_shape():
    envelope = ModelNotFoundError("nope", ["b", "a"]).envelope()
    assert envelope == {
        "error": {
            "message": "The model 'nope' does not exist. Available models: a, b.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert ServiceUnavailableError("starting").status_code == 503
