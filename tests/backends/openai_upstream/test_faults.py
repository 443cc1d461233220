"""The `openai` backend against a fault-injecting upstream, through the real gateway server
with the official SDK: what a client sees when the upstream misbehaves."""

import socket

import httpx
import openai
import orjson
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.polling import wait_until
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
            entry("stall-long", "fault-stall", timeout=3600),  # longer than the fake's stall
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


def test_stall_before_first_byte_is_a_504_after_the_models_timeout(client, gateway, upstream):
    """`stall` gives up after its 1 s while `stall-long` (3600 s), sent before it, still waits:
    each model's own timeout applies, and the fake's 30 s stall ends neither."""
    sent = len(upstream.requests)
    body = orjson.dumps({"model": "stall-long", "messages": HI})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port)) as waiting:
        waiting.sendall(head.encode() + body)
        wait_until(lambda: len(upstream.requests) > sent, "stall-long reaching the upstream")
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="stall", messages=HI)
        assert info.value.status_code == 504
        assert info.value.body["code"] == "upstream_timeout"
        waiting.setblocking(False)
        with pytest.raises(BlockingIOError):  # no answer to stall-long yet
            waiting.recv(1)


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


def test_stream_is_relayed_chunk_by_chunk_not_buffered(gateway, upstream):
    """The first event reaches the client while the upstream is still streaming: the client
    hangs up on it and the upstream sees that mid-stream (the fake pauses between events). A
    gateway that read the whole upstream stream first would leave nothing to hang up on."""
    before = upstream.stream_disconnects
    body = {"model": "slow", "messages": HI, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body) as response:
        first = next(line for line in response.iter_lines() if line.startswith("data: {"))
    assert orjson.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
    wait_until(lambda: upstream.stream_disconnects > before, "the upstream seeing the hang-up")


def test_client_disconnect_closes_the_upstream_stream(gateway, upstream):
    before = upstream.stream_disconnects
    body = {"model": "slow", "messages": HI, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body) as response:
        next(response.iter_lines())
    wait_until(lambda: upstream.stream_disconnects > before, "the upstream stream closed")
    assert upstream.stream_disconnects == before + 1


def test_down_upstream_gives_502_then_503_until_it_is_back(tmp_path):
    """The failed request itself marks the model not ready (no health check runs in between:
    health_interval is 60 s), so the next one is a 503 until the upstream is back."""
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
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="m", messages=HI)
            # refused by the dead port, not left to run into a timeout (that would be a 504)
            assert info.value.status_code == 502 and "unreachable" in info.value.message
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="m", messages=HI)
            assert info.value.status_code == 503
            assert info.value.body["code"] == "model_not_ready"
            fake.start()  # back on the same port: the backend recovers by itself
            wait_until(
                lambda: httpx.get(gateway.url + "/ready").status_code == 200, "the model recovering"
            )
            assert client.chat.completions.create(model="m", messages=HI).model == "m"


def test_client_disconnect_abandons_a_non_streaming_upstream_request(gateway, upstream):
    before = upstream.stall_disconnects
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gateway.url + "/v1/chat/completions",
            timeout=0.3,
            json={"model": "stall-long", "messages": HI},
        )
    # Only the client's going away can end it early: stall-long's timeout is 3600 s, and the
    # fake ending its own 30 s stall is not counted as a disconnect.
    wait_until(lambda: upstream.stall_disconnects > before, "the upstream request abandoned")
    assert upstream.stall_disconnects == before + 1
