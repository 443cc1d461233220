"""The protocol models accept what OpenAI accepts, refuse what it refuses, and keep extras."""

import pytest
from pydantic import ValidationError

from vlm_gateway.core.protocol import ChatCompletionRequest

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}


def request(**fields):
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return ChatCompletionRequest.model_validate(base | fields)


def test_every_role_and_part_kind_is_accepted():
    req = request(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "rules"}]},
            {"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE, IMAGE]},
            {"role": "assistant", "content": "a cat"},
            {"role": "tool", "content": "x", "tool_call_id": "call_1"},
        ]
    )
    assert [m.role for m in req.messages] == ["system", "developer", "user", "assistant", "tool"]
    assert req.messages[2].content[1].image_url.detail == "low"


def test_unmodelled_fields_are_kept_for_forwarding():
    req = request(top_k=5, min_p=0.1, repetition_penalty=1.1)
    assert req.model_dump(exclude_unset=True)["top_k"] == 5
    assert req.model_extra == {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1}


def test_exclude_unset_forwards_exactly_what_the_client_sent():
    req = request(temperature=0, stop=["a", "b"])
    assert req.model_dump(exclude_unset=True) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.0,
        "stop": ["a", "b"],
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 2.5},
        {"top_p": 1.5},
        {"n": 0},
        {"stop": ["1", "2", "3", "4", "5"]},
        {"top_logprobs": 21},
        {"presence_penalty": -3},
        {"max_tokens": 0},
        {"messages": []},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "x", "detail": "ultra"}}
                    ],
                }
            ]
        },
    ],
)
def test_out_of_range_values_are_refused(fields):
    with pytest.raises(ValidationError):
        request(**fields)


def test_max_completion_tokens_wins_over_max_tokens():
    assert request(max_tokens=5, max_completion_tokens=7).output_token_limit == 7
    assert request(max_tokens=5).output_token_limit == 5
