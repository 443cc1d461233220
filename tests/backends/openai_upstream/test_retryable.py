"""What the `openai` backend tells failover of each upstream failure: `retryable` for those
before the answer's head (no answer at all); the status for an answer with an error status
(the model's `failover_on` decides, backends/failover_rule.py); neither for a failure after
the head."""

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


@pytest.mark.parametrize("status", [500, 502, 503, 504, 400, 429])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_statuses_are_told_as_such(status, stream):
    with StatusUpstream(status=status) as upstream:
        error = failure(upstream.base_url, "m", stream)
    assert error.upstream_status == status and not error.retryable


def test_refused_connection_and_timeout_before_the_head_are_retryable():
    refused = failure(f"http://127.0.0.1:{free_port()}/v1", "m")
    assert refused.retryable and refused.upstream_status is None
    with StatusUpstream(held=True) as upstream:  # held until the exit: the timeout acts
        timed_out = failure(upstream.base_url, "m", timeout=0.3)
    assert timed_out.retryable and timed_out.upstream_status is None


AFTER_THE_HEAD = [("fault-badjson", False), ("fault-drop", False), ("fault-drop", True)]


@pytest.mark.parametrize("mode,stream", AFTER_THE_HEAD)
def test_failures_after_the_head_are_not(mode, stream):
    with FakeUpstream() as upstream:
        error = failure(upstream.base_url, mode, stream)
    assert not error.retryable and error.upstream_status is None
