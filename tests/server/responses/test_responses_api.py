"""POST /v1/responses through the real gateway, driven by the official `openai` SDK and checked
with its own types: the tiny BLIP-2 served in the gateway's process (its words are noise, so
these tests check shapes, counts, determinism) and the fake upstream (what the backend's chat
call received, and failures on demand)."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.server.conftest import API_KEY, completion_tokens_counted
from tests.support.images import png_data_url

EVENT = TypeAdapter(ResponseStreamEvent)
LIFECYCLE = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


@pytest.fixture(scope="module")
def client(api_gateway):
    return openai.OpenAI(base_url=api_gateway.url + "/v1", api_key=API_KEY, max_retries=0)


def image_input(text: str = "What is in the picture?", url: str | None = None, **image) -> list:
    part = {"type": "input_image", "image_url": url or png_data_url(seed=2), **image}
    return [{"role": "user", "content": [part, {"type": "input_text", "text": text}]}]


def raw_post(api_gateway, body: dict, **headers) -> httpx.Response:
    headers = {"authorization": f"Bearer {API_KEY}", **headers}
    return httpx.post(api_gateway.url + "/v1/responses", json=body, headers=headers, timeout=60)


# -- answers -----------------------------------------------------------------------------------


def test_create_with_an_image_is_a_response_the_sdk_validates(client):
    answer = client.responses.create(
        model="tiny-blip2", input=image_input(), max_output_tokens=6, temperature=0
    )
    Response.model_validate(answer.model_dump())
    assert answer.object == "response" and answer.model == "tiny-blip2"
    assert answer.id.startswith("resp_")
    # max_output_tokens cut it short: incomplete, as OpenAI says it
    assert answer.status == "incomplete"
    assert answer.incomplete_details.reason == "max_output_tokens"
    message = answer.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert answer.output_text == message.content[0].text and answer.output_text
    usage = answer.usage
    assert usage.output_tokens == 6 and usage.input_tokens > 4  # BLIP-2's 4 query tokens + text
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_string_input_and_instructions_are_served(client):
    # BLIP-2 ignores system turns (instructions): the count proves the text went in.
    plain = client.responses.create(model="fake", input="hello", max_output_tokens=5)
    assert plain.status == "completed" and plain.output_text
    with_instructions = client.responses.create(
        model="tiny-blip2",
        input=image_input("Describe."),
        instructions="Be brief.",
        max_output_tokens=3,
    )
    assert with_instructions.usage.output_tokens == 3


def test_greedy_answer_is_deterministic_and_the_stream_assembles_it(client):
    fields = {"model": "tiny-blip2", "input": image_input(), "max_output_tokens": 8}
    first = client.responses.create(temperature=0, **fields)
    second = client.responses.create(temperature=0, **fields)
    assert first.output_text == second.output_text
    with client.responses.stream(temperature=0, **fields) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
    assert "".join(deltas) == first.output_text


def test_stream_events_come_in_the_sdk_order_with_sequence_numbers(client):
    stream = client.responses.create(
        model="tiny-blip2", input=image_input(), max_output_tokens=5, temperature=0, stream=True
    )
    events = [EVENT.validate_python(event.model_dump()) for event in stream]
    kinds = [event.type for event in events]
    deltas = kinds.count("response.output_text.delta")
    assert kinds == LIFECYCLE + ["response.output_text.delta"] * deltas + CLOSING + [
        "response.incomplete"
    ]
    assert deltas >= 1
    assert [event.sequence_number for event in events] == list(range(len(events)))
    final = events[-1].response
    assert final.usage.output_tokens == 5 and final.usage.input_tokens > 4
    assert final.output_text == events[-4].text  # output_text.done's text
    assert len({event.response.id for event in events if hasattr(event, "response")}) == 1


def test_a_completed_stream_ends_with_response_completed(client):
    with client.responses.stream(model="fake", input="hi", max_output_tokens=50) as stream:
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text
    assert final.usage.input_tokens > 0


def test_an_http_image_url_goes_through_the_resolver(client, api_gateway):
    url = api_gateway.images.url("/cat.png")
    before = api_gateway.images.hits["/cat.png"]
    answer = client.responses.create(
        model="tiny-blip2", input=image_input(url=url, detail="low"), max_output_tokens=2
    )
    assert answer.usage.output_tokens == 2
    assert api_gateway.images.hits["/cat.png"] == before + 1


def test_the_backend_receives_the_translated_chat_request(client, api_gateway):
    api_gateway.upstream.clear()
    client.responses.create(
        model="fake",
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Plain words."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            {"role": "user", "content": image_input("second", detail="high")[0]["content"]},
        ],
        max_output_tokens=7,
        temperature=0.5,
        top_p=0.9,
        user="u-1",
        metadata={"k": "v"},
    )
    sent = api_gateway.upstream.requests[-1]
    assert sent["max_completion_tokens"] == 7 and sent["temperature"] == 0.5
    assert sent["top_p"] == 0.9 and sent["user"] == "u-1" and "metadata" not in sent
    roles = [message["role"] for message in sent["messages"]]
    assert roles == ["system", "system", "user", "assistant", "user"]
    assert sent["messages"][0]["content"] == "Be brief."
    image = sent["messages"][4]["content"][0]["image_url"]
    assert image["url"].startswith("data:image/png;base64,") and image["detail"] == "high"


# -- refusals and errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format.type"),
        ({"truncation": "auto"}, "truncation"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
    ],
)
def test_unsupported_features_are_a_400_naming_the_field(client, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="fake", input="hi", **fields)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param
    assert caught.value.body["type"] == "invalid_request_error"


def test_store_false_is_accepted_and_nothing_is_stored(client, api_gateway):
    answer = client.responses.create(model="fake", input="hi", store=False)
    assert answer.model_extra.get("store") is False
    # There is no retrieval: the id cannot be fetched back.
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(answer.id)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": "fake"}, "input"),
        ({"model": "fake", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "fake", "input": "hi", "modalities": ["text"]}, "modalities"),
        ({"model": "fake", "input": [{"role": "user", "content": [{"type": "x"}]}]}, None),
        (
            {
                "model": "fake",
                "input": [
                    {"role": "assistant", "content": [{"type": "input_image", "image_url": "x"}]}
                ],
            },
            "input[0].content[0]",
        ),
        ({"model": "fake", "input": [{"type": "function_call_output", "output": "x"}]}, None),
    ],
)
def test_invalid_bodies_are_a_400_in_openai_shape(api_gateway, body, param):
    reply = raw_post(api_gateway, body)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param


def test_image_errors_name_the_responses_field(client, api_gateway):
    cases = [
        (image_input(url="http://169.254.169.254/latest"), "input[0].content[0].image_url"),
        (image_input(url="data:image/png;base64,AAAA"), "input[0].content[0].image_url"),
        (image_input(file_id="file-1", url=None), "input[0].content[0].file_id"),
    ]
    for given, param in cases:
        if param.endswith("file_id"):
            given[0]["content"][0].pop("image_url")
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="tiny-blip2", input=given, max_output_tokens=2)
        assert caught.value.body["param"] == param, caught.value.body


def test_unknown_model_and_missing_key(client, api_gateway):
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="nope", input="hi")
    assert caught.value.body["code"] == "model_not_found"
    anonymous = openai.OpenAI(base_url=api_gateway.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.responses.create(model="fake", input="hi")


def test_upstream_failure_before_and_during_the_stream(client):
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="fake-500", input="hi")
    events = list(client.responses.create(model="fake-drop", input="hi", stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "server_error"
    assert events[-1].response.status == "failed"


@pytest.mark.parametrize("stream", [False, True])
def test_tokens_are_counted_in_the_metrics(client, api_gateway, stream):
    before = completion_tokens_counted(api_gateway.url, "tiny-blip2")
    fields = {"model": "tiny-blip2", "input": image_input(), "max_output_tokens": 3}
    if stream:
        with client.responses.stream(**fields) as events:
            events.until_done()
    else:
        client.responses.create(**fields)
    assert completion_tokens_counted(api_gateway.url, "tiny-blip2") == before + 3
