"""The event stream's hold on its backend: released however the response ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from vlm_gateway.backends.base import Backend
from vlm_gateway.server.route_helpers import _Relay, _RelayedStream


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
    backend.in_flight = 1  # as stream_tracked leaves it after the opening
    upstream = _UpstreamEvents()
    response = _RelayedStream(_Relay(backend, upstream, None))

    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def slow_send(message: dict[str, Any]) -> None:
        await asyncio.sleep(1)  # the head is in flight when the disconnect is noticed

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}}
    asyncio.run(response(scope, gone, slow_send))
    assert backend.in_flight == 0
    assert upstream.closed
