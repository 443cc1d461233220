"""GET /metrics on real gateway processes: model and replica labels, streams (time to first
token, usage from the last chunk), live state read at scrape time, batches, and each managed
vLLM's own `vllm:` series re-exported with model and replica labels."""

from __future__ import annotations

import sys

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.batch.batch_support import chat_line, jsonl, wait_final
from tests.support.processes import REPO, GatewayProcess
from tests.support.settings import DEAD_UPSTREAM

HI = [{"role": "user", "content": "hi"}]
FAKE_VLLM = [sys.executable, "-m", "tests.support.fake_vllm"]


def scrape(gateway: GatewayProcess) -> str:
    response = httpx.get(gateway.url + "/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def values(text: str, name: str, **match: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted labels: value} of the samples called `name` whose labels include `match`."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and match.items() <= sample.labels.items()
    }


def value(text: str, name: str, **match: str) -> float:
    """The one sample of `name` with exactly these labels (0 when there is none)."""
    for labels, found in values(text, name, **match).items():
        if dict(labels) == match:
            return found
    return 0.0


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    work = tmp_path_factory.mktemp("scrape")

    def entry(name: str, upstream_model: str, base_url: str = upstream.base_url) -> dict:
        return {
            "name": name,
            "backend": "openai",
            "base_url": base_url,
            "upstream_model": upstream_model,
        }

    config = {
        "data_dir": str(work / "data"),
        "models": [
            entry("m", "ok", DEAD_UPSTREAM),  # replica 0 of m never becomes ready
            entry("m", "ok"),  # replica 1 serves every request for m
            entry("bad", "fault-400"),
            entry("s", "ok"),
            entry("b", "ok"),
        ],
    }
    with GatewayProcess(config, work) as gateway:
        yield gateway


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def test_requests_carry_the_model_and_the_replica_that_served(gateway, client):
    for _ in range(2):
        client.chat.completions.create(model="m", messages=HI)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="bad", messages=HI)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HI)

    text = scrape(gateway)
    # No keys configured: every request is the one anonymous caller's.
    chat = {"route": "/v1/chat/completions", "method": "POST", "key": "anonymous"}
    requests = "vlmgw_requests_total"
    assert value(text, requests, **chat, model="m", replica="1", status="200") == 2
    assert value(text, requests, **chat, model="bad", replica="0", status="400") == 1
    assert value(text, requests, **chat, model="", replica="", status="404") == 1
    tokens = {"model": "m", "replica": "1", "key": "anonymous"}
    assert value(text, "vlmgw_prompt_tokens_total", **tokens) == 10
    assert value(text, "vlmgw_completion_tokens_total", **tokens) == 2
    state = "vlmgw_replica_state"
    assert value(text, state, model="m", replica="0", backend="openai", state="ready") == 0
    assert value(text, state, model="m", replica="1", backend="openai", state="ready") == 1
    in_flight = values(text, "vlmgw_requests_in_flight", model="m")
    assert in_flight == {
        (("model", "m"), ("replica", "0")): 0,
        (("model", "m"), ("replica", "1")): 0,
    }


def test_streams_observe_first_token_and_count_usage_from_the_last_chunk(gateway, client):
    for include_usage in (True, True, False):
        options = {"include_usage": True} if include_usage else None
        chunks = client.chat.completions.create(
            model="s", messages=HI, stream=True, stream_options=options
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello"

    text = scrape(gateway)
    labels = {"route": "/v1/chat/completions", "model": "s", "replica": "0"}
    assert value(text, "vlmgw_time_to_first_token_seconds_count", **labels) == 3
    # usage arrives only when asked for: two streams of 5 prompt tokens and 1 completion token
    tokens = {"model": "s", "replica": "0", "key": "anonymous"}
    assert value(text, "vlmgw_prompt_tokens_total", **tokens) == 10
    assert value(text, "vlmgw_completion_tokens_total", **tokens) == 2


def test_batches_by_status_and_batch_requests_by_outcome(gateway, client):
    lines = [chat_line(f"ok-{i}", "b") for i in range(3)] + [chat_line("refused", "bad")]
    upload = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_final(client, batch.id).status == "completed"

    text = scrape(gateway)
    assert value(text, "vlmgw_batches", status="completed") == 1
    assert value(text, "vlmgw_batches", status="in_progress") == 0
    batch_requests = "vlmgw_batch_requests_total"
    assert value(text, batch_requests, model="b", outcome="completed") == 3
    assert value(text, batch_requests, model="bad", outcome="failed") == 1
    batch_tokens = values(text, "vlmgw_prompt_tokens_total", model="b", replica="0")
    assert sum(batch_tokens.values()) == 15  # whichever key label batch lines carry


@pytest.fixture(scope="module")
def vllm_gateway(tmp_path_factory):
    """Two replicas of a managed `vllm` model, each a tests/support/fake_vllm.py process."""
    work = tmp_path_factory.mktemp("scrape-vllm")
    entry = {
        "name": "v",
        "backend": "vllm",
        "model": "tiny",
        "command": FAKE_VLLM,
        "replicas": 2,
        "env": {"PYTHONPATH": str(REPO)},
        "startup_timeout": 60,
        "liveness_interval": 3600,  # no probe chat: the fake's request counter counts ours only
    }
    with GatewayProcess({"data_dir": str(work / "data"), "models": [entry]}, work) as gateway:
        yield gateway


def test_vllm_series_reach_the_scrape_with_model_and_replica_labels(vllm_gateway):
    client = openai.OpenAI(base_url=vllm_gateway.url + "/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model="v", messages=HI)  # the least busy: replica 0

    text = scrape(vllm_gateway)
    own = {"engine": "0", "model_name": "v", "finished_reason": "length"}
    success = "vllm:request_success_total"
    assert value(text, success, **own, model="v", replica="0") == 1
    assert value(text, success, **own, model="v", replica="1") == 0
    ttft = "vllm:time_to_first_token_seconds_count"
    assert value(text, ttft, engine="0", model_name="v", model="v", replica="0") == 1
    # one family for both replicas (two TYPE lines for one name would void the whole scrape)
    assert text.count("# TYPE vllm:request_success_total counter") == 1
    assert "process_open_fds" not in text  # vLLM's process series stay its own
    restarts = values(text, "vlmgw_vllm_restarts_total", model="v")
    assert restarts == {
        (("model", "v"), ("replica", "0")): 0,
        (("model", "v"), ("replica", "1")): 0,
    }
