"""Reading request bodies, and the event stream's hold on its backend: released however the
response ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from vlm_gateway.backends.base import Backend
from vlm_gateway.server.route_helpers import RelayedStream, StreamRelay, client_gone, read_body


class _Idle(Backend):
    kind = "test"

    async def chat(self, request: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def chat_stream(self, request: Any) -> AsyncIterator[bytes]:
        raise NotImplementedError


class _UpstreamEvents:
    """An upstream stream that records whether it was closed."""

    def __init__(self) -> None:
        self.closed = False

    def __aiter__(self) -> _UpstreamEvents:
        return self

    async def __anext__(self) -> bytes:
        await asyncio.sleep(0.01)
        return b"data: {}\n\n"

    async def aclose(self) -> None:
        self.closed = True


def test_a_client_gone_before_the_first_event_releases_the_backend():
    """Starlette cancels the body when the client is gone; here before the relay ever ran (the
    head was still being sent): the backend's in-flight count and the upstream stream must
    still be let go, or the replica looks busy forever and its connection stays open."""
    backend = _Idle("m")
    backend.in_flight = 1  # as ModelRequest.stream leaves it after the opening
    upstream = _UpstreamEvents()
    response = RelayedStream(StreamRelay(backend, upstream, None))

    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def slow_send(message: dict[str, Any]) -> None:
        await asyncio.sleep(1)  # the head is in flight when the disconnect is noticed

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}}
    asyncio.run(response(scope, gone, slow_send))
    assert backend.in_flight == 0
    assert upstream.closed


def _request(*messages: dict) -> Request:
    queue = list(messages)

    async def receive() -> dict:
        return queue.pop(0)

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


def test_a_body_read_whole_in_one_piece_or_many():
    one = b"x" * 100_000
    whole = _request({"type": "http.request", "body": one})
    assert asyncio.run(read_body(whole)) is one  # passed on, not copied
    parts = [{"type": "http.request", "body": p, "more_body": True} for p in (b"ab", b"", b"c")]
    pieces = _request(*parts, {"type": "http.request", "body": b"d"})
    assert asyncio.run(read_body(pieces)) == b"abcd"
    assert asyncio.run(read_body(_request({"type": "http.request", "body": b""}))) == b""


def test_a_client_gone_mid_body_is_a_disconnect():
    gone = _request(
        {"type": "http.request", "body": b"a", "more_body": True}, {"type": "http.disconnect"}
    )
    with pytest.raises(ClientDisconnect):
        asyncio.run(read_body(gone))


def test_client_gone_outside_the_gateways_protocol_is_watched_on_receive():
    """In process (no ClientGone in the scope) the disconnect comes through `receive`."""

    async def scenario() -> bool:
        disconnected = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await disconnected.wait()
            return {"type": "http.disconnect"}

        request = Request({"type": "http", "method": "POST", "headers": []}, receive)
        gone, stop_watching = client_gone(request)
        went = asyncio.Event()
        gone.when_gone(went.set)
        disconnected.set()
        await went.wait()
        stop_watching()
        return gone.gone

    assert asyncio.run(scenario())
