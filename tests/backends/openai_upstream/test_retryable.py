"""Which upstream failures the `openai` backend marks `retryable` (failover may try another
replica): only those before the answer's head, and 502/503/504; never a 4xx, a 500, or a
failure after the head."""

import asyncio

import aiohttp
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.processes import free_port
from tests.support.status_upstream import StatusUpstream
from vlm_gateway.backends.openai_upstream.backend import OpenAIUpstreamBackend
from vlm_gateway.core.errors import GatewayError
from vlm_gateway.core.protocol import ChatCompletionRequest

HI = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def failure(base_url: str, upstream_model: str, stream: bool = False, **options) -> GatewayError:
    async def call() -> GatewayError:
        async with aiohttp.ClientSession() as client:
            backend = OpenAIUpstreamBackend(
                "m", base_url, client, upstream_model=upstream_model, **options
            )
            request = ChatCompletionRequest.model_validate({**HI, "stream": stream})
            with pytest.raises(GatewayError) as info:
                if stream:
                    events = await backend.chat_stream(request)
                    async for _ in events:
                        pass
                else:
                    await backend.chat(request)
            return info.value

    return asyncio.run(call())


RETRYABLE = [(502, True), (503, True), (504, True), (500, False), (400, False), (429, False)]


@pytest.mark.parametrize("status,retryable", RETRYABLE)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_statuses(status, retryable, stream):
    with StatusUpstream(status=status) as upstream:
        assert failure(upstream.base_url, "m", stream).retryable is retryable


def test_refused_connection_and_timeout_before_the_head_are_retryable():
    assert failure(f"http://127.0.0.1:{free_port()}/v1", "m").retryable
    with StatusUpstream(held=True) as upstream:  # held until the exit: the timeout acts
        assert failure(upstream.base_url, "m", timeout=0.3).retryable


AFTER_THE_HEAD = [("fault-badjson", False), ("fault-drop", False), ("fault-drop", True)]


@pytest.mark.parametrize("mode,stream", AFTER_THE_HEAD)
def test_failures_after_the_head_are_not(mode, stream):
    with FakeUpstream() as upstream:
        assert not failure(upstream.base_url, mode, stream).retryable
