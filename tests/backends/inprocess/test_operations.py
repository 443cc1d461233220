"""Operating in-process models (transformers, BLIP-2) through a real gateway and the official
openai SDK: an out-of-memory fails only its batch's requests with a 503 and a smaller batch
cap, and the model keeps serving; what was loaded (device, dtype, parameters) is in
/v1/models, /metrics, the start-up lines and check-config's plan.

The out-of-memory comes from the test's gate (tests/support/oom_gateway.py), in the model
thread where a real one would be raised, not from real memory pressure."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.check_config import check_config
from tests.support.images import image_message, png_data_url
from tests.support.oom_gateway import OomGateway
from tests.support.polling import wait_until
from tests.support.torch_device import TEST_DEVICE

pytest.importorskip("torch")

MAX_BATCH = 8
KINDS = {"joy": ("transformers", "llava-joycaption"), "blip": ("blip2", "blip2")}


@pytest.fixture(scope="module")
def config(tiny_models):
    return {
        "models": [
            {
                "name": name,
                "backend": backend,
                "model": str(tiny_models[key]),
                "device": TEST_DEVICE,
                "max_batch_size": MAX_BATCH,
                "batch_wait_ms": 50,
            }
            for name, (backend, key) in KINDS.items()
        ]
    }


@pytest.fixture(scope="module")
def gateway(config, workdir):
    with OomGateway(config, workdir).start(wait_ready=False) as process:
        wait_until(lambda: _all_ready(process.url), "the models to load", deadline_s=120)
        yield process


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def _all_ready(url: str) -> bool:
    models = httpx.get(url + "/ready", timeout=5).json()["models"]
    return all(models[name]["ready"] for name in KINDS)


def ask(client, name: str, image_seed: int = 1, **fields):
    fields.setdefault("max_tokens", 6)
    fields.setdefault("temperature", 0)
    messages = [image_message("What is it?", png_data_url(seed=image_seed))]
    return client.chat.completions.create(model=name, messages=messages, **fields)


def card(gateway, name: str) -> dict:
    model = httpx.get(f"{gateway.url}/v1/models/{name}", timeout=5).json()
    return model["vlm_gateway"]["replicas"][0]


def metric(gateway, family: str, name: str) -> float:
    text = httpx.get(gateway.url + "/metrics", timeout=5).text
    for metrics in text_string_to_metric_families(text):
        for sample in metrics.samples:
            if sample.name == family and sample.labels.get("model") == name:
                return sample.value
    raise AssertionError(f"{family} for {name} not in /metrics")


@pytest.mark.parametrize("name", KINDS)
def test_out_of_memory_fails_only_its_batch_and_the_model_serves_on(gateway, client, name):
    gateway.arm()
    with ThreadPoolExecutor(2) as pool:
        doomed = pool.submit(ask, client, name, n=4)  # one batch of 4 rows
        assert gateway.wait_held() == 4
        queued = pool.submit(ask, client, name, image_seed=2)
        wait_until(lambda: card(gateway, name)["queued"] == 1, "a request queued behind it")
        gateway.release()
        with pytest.raises(openai.APIStatusError) as caught:
            doomed.result()
        answered = queued.result()  # the next batch's request is served
    error = caught.value
    assert error.status_code == 503
    assert error.code == "out_of_memory"
    assert error.response.headers["retry-after"] == "1"
    assert "ran out of device memory" in error.message and "Retry" in error.message
    assert answered.choices[0].message.content is not None
    replica = card(gateway, name)
    assert replica["state"] == "ready"
    assert (replica["max_batch_size"], replica["batch_cap"], replica["out_of_memory"]) == (8, 2, 1)
    assert metric(gateway, "vlmgw_batch_cap", name) == 2
    assert metric(gateway, "vlmgw_out_of_memory_total", name) == 1
    # The smaller cap is in force: 4 choices now go in batches of 2.
    before = len(gateway.batch_sizes())
    assert len(ask(client, name, n=4).choices) == 4
    assert gateway.batch_sizes()[before:] == [2, 2]


@pytest.mark.parametrize("name", KINDS)
def test_a_stream_whose_batch_runs_out_of_memory_ends_with_the_error(gateway, client, name):
    gateway.arm()
    stream = ask(client, name, image_seed=3, stream=True)
    gateway.wait_held()
    gateway.release()
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert caught.value.code == "out_of_memory"
    assert ask(client, name, image_seed=3).choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("name", KINDS)
def test_v1_models_and_the_start_up_lines_say_what_was_loaded(gateway, name):
    replica = card(gateway, name)
    assert replica["device"] == TEST_DEVICE
    assert replica["dtype"] == ("float32" if TEST_DEVICE == "cpu" else "float16")
    assert replica["parameters"] > 100_000  # the tiny models have 250-330 thousand
    architecture = replica["architecture"]
    log = gateway.log()
    assert f"model {name}: loading weights from " in log
    loaded = re.search(
        rf"model {name}: {architecture} loaded from \S+ in [0-9.]+ s: "
        rf"{replica['parameters']:,} parameters on {replica['device']} \({replica['dtype']}\)",
        log,
    )
    assert loaded, log[-3000:]


def test_check_config_plans_the_parameters_v1_models_reports(gateway, config, tmp_path):
    plan = check_config(config, tmp_path)
    assert plan.returncode == 0, plan.stderr
    for name in KINDS:
        assert f"parameters: {card(gateway, name)['parameters']:,} (" in plan.stdout
    assert f"device: {TEST_DEVICE}, dtype: auto" in plan.stdout
