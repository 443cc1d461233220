"""The translated APIs' shared parts, as pure units: reading a chat stream back as chunks, naming
a refused image by the client's own field, and each route's error envelope."""

from __future__ import annotations

import asyncio

import pytest

from vlm_gateway.core.errors import (
    GatewayError,
    InvalidAPIKeyError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamTimeoutError,
)
from vlm_gateway.server.chat_bridge import chat_chunks, renamed
from vlm_gateway.server.error_shapes import error_reply


async def _blobs(*blobs: bytes):
    for blob in blobs:
        yield blob


def _read(*blobs: bytes) -> list[dict]:
    async def collect():
        return [chunk async for chunk in chat_chunks(_blobs(*blobs))]

    return asyncio.run(collect())


def test_chunks_are_read_across_blob_boundaries_and_stop_at_done():
    chunks = _read(
        b'data: {"a": 1}\n\ndata: {"b"', b": 2}\n\n", b"data: [DONE]\n\n", b"data: {}\n\n"
    )
    assert chunks == [{"a": 1}, {"b": 2}]


def test_an_error_event_is_raised_as_the_error_it_describes():
    with pytest.raises(GatewayError) as caught:
        _read(b'data: {"a": 1}\n\n', b'data: {"error": {"message": "boom", "type": "x"}}\n\n')
    assert caught.value.message == "boom" and caught.value.error_type == "x"
    with pytest.raises(GatewayError):
        _read(b"data: {not json}\n\n")


def test_renamed_maps_the_longest_known_prefix():
    renames = {
        "messages": "input",
        "messages[1].content[0].image_url.url": "input[0].content[0].image_url",
    }
    assert (
        renamed("messages[1].content[0].image_url.url", renames) == "input[0].content[0].image_url"
    )
    assert renamed("messages", renames) == "input"
    assert renamed("messages[3].content", renames) == "input[3].content"
    assert renamed("model", renames) == "model" and renamed(None, renames) is None


@pytest.mark.parametrize(
    "error,status,kind",
    [
        (
            GatewayError("x", status_code=400, error_type="invalid_request_error"),
            400,
            "invalid_request_error",
        ),
        (InvalidAPIKeyError("x"), 401, "authentication_error"),
        (PayloadTooLargeError("x"), 413, "request_too_large"),
        (RateLimitError("x"), 429, "rate_limit_error"),
        (ServiceUnavailableError("x"), 529, "overloaded_error"),
        (UpstreamTimeoutError("x"), 504, "timeout_error"),
        (GatewayError("x", status_code=502), 502, "api_error"),
    ],
)
def test_anthropic_routes_answer_in_anthropics_shape(error, status, kind):
    assert error_reply("/v1/messages", error) == (
        status,
        {"type": "error", "error": {"type": kind, "message": "x"}},
    )
    assert error_reply("/v1/chat/completions", error) == (error.status_code, error.envelope())
    assert error_reply(None, error) == (error.status_code, error.envelope())


def test_the_anthropic_message_names_the_field():
    error = GatewayError("Invalid value.", status_code=400, param="messages[0].content")
    _, body = error_reply("/v1/messages", error)
    assert body["error"]["message"] == "messages[0].content: Invalid value."
