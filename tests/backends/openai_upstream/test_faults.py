"""The `openai` backend against a fault-injecting upstream, through the real gateway server
with the official SDK: what a client sees when the upstream misbehaves."""

import time

import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.processes import GatewayProcess

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    def entry(name, mode, **extra):
        return {
            "name": name,
            "backend": "openai",
            "base_url": upstream.base_url,
            "upstream_model": mode,
            "api_key": "upstream-secret",
            **extra,
        }

    config = {
        "models": [
            entry("ok", "ok"),
            entry("e500", "fault-500"),
            entry("e400", "fault-400"),
            entry("stall", "fault-stall", timeout=1),
            entry("stall-long", "fault-stall", timeout=30),
            entry("drop", "fault-drop"),
            entry("badjson", "fault-badjson"),
            entry("slow", "slow-stream"),
        ]
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("faults")) as process:
        yield process


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def test_request_is_forwarded_with_upstream_name_key_and_extras(client, upstream):
    upstream.clear()
    reply = client.chat.completions.create(
        model="ok", messages=HI, temperature=0, extra_body={"top_k": 3, "min_p": 0.1}
    )
    assert reply.model == "ok" and reply.choices[0].message.content == "hello"
    sent = upstream.requests[-1]
    assert sent["model"] == "ok" and sent["top_k"] == 3 and sent["min_p"] == 0.1
    assert "max_tokens" not in sent  # only what the client set is forwarded
    assert upstream.request_headers[-1]["authorization"] == "Bearer upstream-secret"


def test_upstream_500_is_a_502(client):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="e500", messages=HI)
    assert info.value.status_code == 502
    assert "fake internal error" in info.value.message


def test_upstream_4xx_keeps_status_message_and_param(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="e400", messages=HI, stream=True)
    assert info.value.body["param"] == "max_tokens"
    assert "max_tokens too large" in info.value.body["message"]


def test_stall_before_first_byte_is_a_504_after_the_timeout(client):
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="stall", messages=HI)
    assert info.value.status_code == 504
    assert info.value.body["code"] == "upstream_timeout"
    assert time.monotonic() - started < 5


def test_invalid_json_from_upstream_is_a_502(client):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="badjson", messages=HI)
    assert info.value.status_code == 502
    with pytest.raises(openai.APIError, match="invalid stream event"):
        list(client.chat.completions.create(model="badjson", messages=HI, stream=True))


def test_stream_dropped_mid_way_ends_with_an_error_event(client):
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="drop", messages=HI, stream=True):
            received.append(chunk.choices[0].delta.content)
    assert received == ["hel", "lo"]  # what arrived before the drop was relayed
    assert info.value.body["type"] == "upstream_error"


def test_stream_is_relayed_chunk_by_chunk_not_buffered(gateway):
    body = {"model": "slow", "messages": HI, "stream": True}
    arrivals = []
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body) as response:
        started = time.monotonic()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic() - started)
    # The fake pauses 0.2 s between chunks: buffering would deliver them all at once.
    assert len(arrivals) >= 4 and arrivals[-1] - arrivals[0] > 0.5


def test_client_disconnect_closes_the_upstream_stream(gateway, upstream):
    before = upstream.stream_disconnects
    body = {"model": "slow", "messages": HI, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body) as response:
        next(response.iter_lines())
    deadline = time.monotonic() + 3
    while upstream.stream_disconnects == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.stream_disconnects == before + 1


def test_down_upstream_gives_502_within_1s_then_503_at_once(tmp_path):
    with FakeUpstream() as fake:
        config = {
            "models": [
                {
                    "name": "m",
                    "backend": "openai",
                    "base_url": fake.base_url,
                    "upstream_model": "ok",
                    "health_interval": 60,
                }
            ]
        }
        with GatewayProcess(config, tmp_path) as gateway:
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
            assert client.chat.completions.create(model="m", messages=HI).model == "m"
            fake.stop()
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="m", messages=HI)
            assert info.value.status_code == 502 and time.monotonic() - started < 1
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="m", messages=HI)
            assert info.value.status_code == 503 and time.monotonic() - started < 0.5
            assert info.value.body["code"] == "model_not_ready"
            fake.start()  # back on the same port: the backend recovers by itself
            deadline = time.monotonic() + 5
            while httpx.get(gateway.url + "/ready").status_code != 200:
                assert time.monotonic() < deadline, "model did not recover"
                time.sleep(0.1)
            assert client.chat.completions.create(model="m", messages=HI).model == "m"


def test_client_disconnect_abandons_a_non_streaming_upstream_request(gateway, upstream):
    before = upstream.stall_disconnects
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gateway.url + "/v1/chat/completions",
            timeout=0.3,
            json={"model": "stall-long", "messages": HI},
        )
    deadline = time.monotonic() + 3  # long before the gateway's own 30 s upstream timeout
    while upstream.stall_disconnects == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.stall_disconnects == before + 1
