"""Generation defaults of `backend: transformers`: the model's own generation_config, the entry's
`generation:` over it, the request's fields over both; through a real gateway and the official
openai SDK, on a copy of the tiny LLaVA-JoyCaption whose generation_config samples (the seed's
temperature and top_p) and stops at 5 new tokens."""

from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest

from tests.backends.transformers.test_backend import SeedRecipe
from tests.support.images import image_message, png_data_url
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess
from tests.support.torch_device import TEST_DEVICE

pytest.importorskip("torch")

MODEL_OWN = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_new_tokens": 5}
ENTRY = {"temperature": 0, "top_k": 7, "max_new_tokens": 3}


@pytest.fixture(scope="module")
def model_dir(tiny_models, tmp_path_factory):
    directory = tmp_path_factory.mktemp("own-generation") / "tiny-llava"
    shutil.copytree(tiny_models["llava-joycaption"], directory)
    path = directory / "generation_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | MODEL_OWN))
    return directory


@pytest.fixture(scope="module")
def gateway(model_dir, workdir):
    entry = {"backend": "transformers", "model": str(model_dir), "device": TEST_DEVICE}
    config = {
        "models": [
            {**entry, "name": "own"},
            {**entry, "name": "tuned", "generation": ENTRY},
            {**entry, "name": "longer", "default_max_tokens": 8},
        ]
    }
    with GatewayProcess(config, workdir).start(wait_ready=False) as process:
        wait_until(
            lambda: httpx.get(process.url + "/ready", timeout=5).status_code == 200,
            "the models to load",
            deadline_s=120,
        )
        yield process


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def seed(model_dir):
    return SeedRecipe(model_dir, None)


def greedy(seed: SeedRecipe, max_new_tokens: int) -> str:
    import torch

    inputs = seed.inputs(1, "What is it?")
    with torch.inference_mode():
        out = seed.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return seed.processor.tokenizer.decode(
        out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )


def ask(client, name: str, **fields):
    messages = [image_message("What is it?", png_data_url(seed=1))]
    return client.chat.completions.create(model=name, messages=messages, **fields)


def defaults(gateway, name: str) -> dict:
    model = httpx.get(f"{gateway.url}/v1/models/{name}", timeout=5).json()
    return model["vlm_gateway"]["replicas"][0]["generation"]


def test_v1_models_shows_the_models_own_defaults_and_the_entrys_over_them(gateway):
    assert defaults(gateway, "own") | MODEL_OWN == defaults(gateway, "own")
    tuned = defaults(gateway, "tuned")
    assert tuned["do_sample"] is False  # temperature 0: greedy unless a request samples
    assert (tuned["top_k"], tuned["max_new_tokens"]) == (7, 3)
    assert tuned["top_p"] == 0.9  # the model's own, where the entry says nothing
    assert defaults(gateway, "longer")["max_new_tokens"] == 8


def test_a_request_that_says_nothing_gets_the_defaults(client, seed):
    own = ask(client, "own", temperature=0)  # the model's own limit: 5 tokens
    assert own.choices[0].message.content == greedy(seed, 5)
    assert (own.usage.completion_tokens, own.choices[0].finish_reason) == (5, "length")
    tuned = ask(client, "tuned")  # the entry's: greedy, 3 tokens
    assert tuned.choices[0].message.content == greedy(seed, 3)
    assert tuned.usage.completion_tokens == 3
    longer = ask(client, "longer", temperature=0)  # default_max_tokens: 8
    assert longer.choices[0].message.content == greedy(seed, 8)
    assert longer.usage.completion_tokens == 8


def test_the_requests_fields_override_both(client, seed):
    answer = ask(client, "tuned", max_tokens=7)
    assert answer.choices[0].message.content == greedy(seed, 7)
    assert answer.usage.completion_tokens == 7
    # The entry's default is greedy; a request's temperature samples (seeded: the same texts
    # every run, and not both the greedy one among the entry's top 7 tokens).
    sampled = ask(client, "tuned", temperature=1.0, seed=3, n=2, max_tokens=3)
    assert {choice.message.content for choice in sampled.choices} != {greedy(seed, 3)}
