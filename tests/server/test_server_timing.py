"""Server-Timing end to end: a real gateway in front of the fake upstream, driven by the
official SDK. JSON answers, streams and errors say the gateway's own time and the upstream's,
image requests the image work too; `server_timing: false` leaves the header out."""

from __future__ import annotations

import re

import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.images import png_data_url
from tests.support.processes import GatewayProcess
from tests.support.settings import upstream_entry

PART = re.compile(r"(\w+);dur=(\d+\.\d{3})")
HI = [{"role": "user", "content": "hi"}]


def timings(headers) -> dict[str, float]:
    return {name: float(ms) for name, ms in PART.findall(headers["server-timing"])}


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as fake:
        yield fake


def gateway_config(upstream: FakeUpstream, work, **settings) -> dict:
    models = [
        upstream_entry("m", upstream.base_url, "ok"),
        upstream_entry("broken", upstream.base_url, "fault-500"),
    ]
    return {"data_dir": str(work / "data"), "models": models, **settings}


@pytest.fixture(scope="module")
def client(upstream, tmp_path_factory):
    work = tmp_path_factory.mktemp("server-timing")
    with GatewayProcess(gateway_config(upstream, work), work) as gw:
        yield openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


def test_a_json_answer_says_the_gateways_time_and_the_upstreams(client):
    raw = client.chat.completions.with_raw_response.create(model="m", messages=HI)
    parts = timings(raw.headers)
    assert list(parts) == ["gateway", "upstream"]
    assert parts["upstream"] > 0 and parts["gateway"] > 0
    assert raw.parse().choices[0].message.content


def test_an_image_request_says_the_image_work_too(client):
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": png_data_url(64, 64)}},
    ]
    messages = [{"role": "user", "content": content}]
    raw = client.chat.completions.with_raw_response.create(model="m", messages=messages)
    assert list(timings(raw.headers)) == ["gateway", "upstream", "images"]


def test_a_stream_says_the_time_to_its_opening(client):
    with client.chat.completions.with_streaming_response.create(
        model="m", messages=HI, stream=True
    ) as raw:
        assert list(timings(raw.headers)) == ["gateway", "upstream"]
        assert any(raw.iter_lines())


def test_an_upstream_error_has_the_header_too(client):
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="broken", messages=HI)
    assert list(timings(caught.value.response.headers)) == ["gateway", "upstream"]


def test_server_timing_false_leaves_the_header_out(upstream, tmp_path):
    config = gateway_config(upstream, tmp_path, server_timing=False)
    with GatewayProcess(config, tmp_path) as gw:
        off = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
        raw = off.chat.completions.with_raw_response.create(model="m", messages=HI)
    assert "server-timing" not in raw.headers
    assert raw.headers["x-request-id"].startswith("req_")
