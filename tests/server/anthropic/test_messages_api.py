"""POST /v1/messages through the real gateway, driven by the official `anthropic` SDK and
checked with its own types: the tiny BLIP-2 served in the gateway's process (its words are
noise: these tests check shapes, counts, determinism) and the fake upstream (what the backend's
chat call received, and failures on demand). Errors on this route are Anthropic's shape."""

from __future__ import annotations

import base64

import anthropic
import httpx
import pytest
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from tests.server.conftest import API_KEY, completion_tokens_counted
from tests.support.images import png_bytes

EVENT = TypeAdapter(RawMessageStreamEvent)
PNG_B64 = base64.b64encode(png_bytes(30, 30, seed=2)).decode()


@pytest.fixture(scope="module")
def client(api_gateway):
    return anthropic.Anthropic(base_url=api_gateway.url, api_key=API_KEY, max_retries=0)


def image_message(text: str = "What is in the picture?", source: dict | None = None) -> list:
    source = source or {"type": "base64", "media_type": "image/png", "data": PNG_B64}
    blocks = [{"type": "image", "source": source}, {"type": "text", "text": text}]
    return [{"role": "user", "content": blocks}]


def raw_post(api_gateway, body: dict, headers: dict | None = None) -> httpx.Response:
    headers = headers if headers is not None else {"x-api-key": API_KEY}
    headers = {"anthropic-version": "2023-06-01", **headers}
    return httpx.post(api_gateway.url + "/v1/messages", json=body, headers=headers, timeout=60)


def error_of(reply: httpx.Response) -> dict:
    body = reply.json()
    ErrorResponse.model_validate(body)
    assert set(body) == {"type", "error"} and body["type"] == "error"
    return body["error"]


# -- answers -----------------------------------------------------------------------------------


def test_create_with_a_base64_image_is_a_message_the_sdk_validates(client):
    message = client.messages.create(
        model="tiny-blip2", max_tokens=6, messages=image_message(), extra_body={"temperature": 0}
    )
    Message.model_validate(message.model_dump())
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "tiny-blip2" and message.id.startswith("msg_")
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.output_tokens == 6 and message.usage.input_tokens > 4


def test_greedy_answer_is_deterministic_and_the_stream_helper_assembles_it(client):
    fields = {"model": "tiny-blip2", "max_tokens": 8, "messages": image_message()}
    first = client.messages.create(**fields, extra_body={"temperature": 0})
    second = client.messages.create(**fields, extra_body={"temperature": 0})
    assert first.content[0].text == second.content[0].text
    with client.messages.stream(**fields, extra_body={"temperature": 0}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == first.content[0].text == final.content[0].text
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 8
    assert final.usage.input_tokens == first.usage.input_tokens


def test_stream_events_come_in_anthropics_order(client):
    stream = client.messages.create(
        model="tiny-blip2", max_tokens=5, messages=image_message(), stream=True
    )
    events = [EVENT.validate_python(event.model_dump()) for event in stream]
    kinds = [event.type for event in events]
    deltas = kinds.count("content_block_delta")
    assert deltas >= 1
    assert kinds == (
        ["message_start", "content_block_start"]
        + ["content_block_delta"] * deltas
        + ["content_block_stop", "message_delta", "message_stop"]
    )
    assert events[0].message.content == [] and events[0].message.stop_reason is None
    assert events[-2].delta.stop_reason == "max_tokens" and events[-2].usage.output_tokens == 5


def test_the_raw_stream_carries_named_events_and_a_ping(api_gateway):
    body = {"model": "fake", "max_tokens": 5, "stream": True, "messages": image_message()}
    with httpx.stream(
        "POST", api_gateway.url + "/v1/messages", json=body, headers={"x-api-key": API_KEY}
    ) as reply:
        names = [line[7:] for line in reply.iter_lines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_a_url_image_source_goes_through_the_resolver(client, api_gateway):
    before = api_gateway.images.hits["/dog.png"]
    source = {"type": "url", "url": api_gateway.images.url("/dog.png")}
    message = client.messages.create(
        model="tiny-blip2", max_tokens=2, messages=image_message(source=source)
    )
    assert message.usage.output_tokens == 2
    assert api_gateway.images.hits["/dog.png"] == before + 1


def test_the_backend_receives_the_translated_chat_request(client, api_gateway):
    api_gateway.upstream.clear()
    message = client.messages.create(
        model="fake",
        max_tokens=9,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            *image_message("second"),
        ],
        stop_sequences=["\n\n", "END"],
        metadata={"user_id": "u-1"},
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 5},
    )
    assert message.stop_reason in ("end_turn", "max_tokens")
    sent = api_gateway.upstream.requests[-1]
    assert sent["max_completion_tokens"] == 9 and sent["stop"] == ["\n\n", "END"]
    assert sent["temperature"] == 0.5 and sent["top_p"] == 0.9 and sent["top_k"] == 5
    assert sent["user"] == "u-1"
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["messages"][0]["content"] == "Be brief."
    image = sent["messages"][3]["content"][0]["image_url"]["url"]
    assert image.startswith("data:image/png;base64,")


# -- keys, refusals and errors in Anthropic's shape -----------------------------------------------


def test_x_api_key_and_bearer_both_pass_and_a_wrong_key_is_anthropics_401(api_gateway):
    body = {"model": "fake", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    assert raw_post(api_gateway, body, {"x-api-key": API_KEY}).status_code == 200
    assert raw_post(api_gateway, body, {"authorization": f"Bearer {API_KEY}"}).status_code == 200
    for headers in ({"x-api-key": "wrong"}, {}):
        reply = raw_post(api_gateway, body, headers)
        assert reply.status_code == 401
        assert error_of(reply)["type"] == "authentication_error"
    stranger = anthropic.Anthropic(base_url=api_gateway.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        stranger.messages.create(**body)


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"tools": [{"name": "f", "input_schema": {"type": "object"}}]}, "tools"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ],
)
def test_unsupported_features_are_a_400_naming_the_field(client, fields, param):
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="fake", max_tokens=3, messages=[{"role": "user", "content": "hi"}], **fields
        )
    error = caught.value.body["error"]
    assert error["type"] == "invalid_request_error" and param in error["message"]


@pytest.mark.parametrize(
    "body,named",
    [
        ({"model": "fake", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({"model": "fake", "max_tokens": 3, "messages": []}, "messages"),
        (
            {
                "model": "fake",
                "max_tokens": 3,
                "messages": [{"role": "user", "content": "hi"}],
                "temperature": 1.5,
            },
            "temperature",
        ),
        (
            {"model": "fake", "max_tokens": 3, "messages": [{"role": "system", "content": "x"}]},
            "messages[0].role",
        ),
    ],
)
def test_invalid_bodies_are_anthropics_400(api_gateway, body, named):
    reply = raw_post(api_gateway, body)
    assert reply.status_code == 400
    error = error_of(reply)
    assert error["type"] == "invalid_request_error" and named in error["message"]


def test_image_errors_name_the_block_and_the_ssrf_guard_holds(client):
    cases = [
        ({"type": "url", "url": "http://169.254.169.254/x"}, "messages[0].content[0].source.url"),
        (
            {"type": "base64", "media_type": "image/png", "data": "AAAA"},
            "messages[0].content[0].source.data",
        ),
        ({"type": "base64", "data": PNG_B64}, "messages[0].content[0].source.media_type"),
    ]
    for source, named in cases:
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.create(
                model="tiny-blip2", max_tokens=2, messages=image_message(source=source)
            )
        assert named in caught.value.body["error"]["message"], caught.value.body


def test_unknown_model_is_not_found_and_upstream_failure_is_api_error(client):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(
            model="nope", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(
            model="fake-500", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
        )
    assert failed.value.body["error"]["type"] == "api_error"


def test_an_error_after_the_stream_began_is_anthropics_error_event(client):
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(
            model="fake-drop", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        for _ in stream:
            pass
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "api_error"


def test_openai_routes_keep_openais_envelope_and_take_no_x_api_key(api_gateway):
    url = api_gateway.url + "/v1/chat/completions"
    reply = httpx.post(url, json={}, headers={"authorization": f"Bearer {API_KEY}"})
    assert reply.status_code == 400 and set(reply.json()) == {"error"}
    reply = httpx.post(url, json={}, headers={"x-api-key": API_KEY})
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    reply = raw_post(api_gateway, {}, headers={})
    assert "x-api-key" in error_of(reply)["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_tokens_are_counted_in_the_metrics(client, api_gateway, stream):
    before = completion_tokens_counted(api_gateway.url, "tiny-blip2")
    fields = {"model": "tiny-blip2", "max_tokens": 3, "messages": image_message()}
    if stream:
        with client.messages.stream(**fields) as events:
            events.until_done()
    else:
        client.messages.create(**fields)
    assert completion_tokens_counted(api_gateway.url, "tiny-blip2") == before + 3
