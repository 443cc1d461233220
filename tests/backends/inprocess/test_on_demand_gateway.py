"""In-process models loaded on demand through the real gateway (`vlm-gateway serve`), driven by
the official `openai` SDK (issue 26): a tiny BLIP-2 and a tiny `backend: transformers`
LLaVA-JoyCaption, both `load: on_demand` under `max_loaded_models: 1`, so each request for the
other model unloads one and loads the other. Their words are noise: the tests check states and
that a model answers alike after every reload. Memory given back: test_swap_memory.py."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.images import image_message, png_data_url
from tests.support.processes import GatewayProcess
from tests.support.torch_device import TEST_DEVICE

pytest.importorskip("torch")

ADMIN, USER = "sk-admin", "sk-user"
MODELS = {"tiny-blip2": ("blip2", "blip2"), "tiny-joy": ("transformers", "llava-joycaption")}


@pytest.fixture(scope="module")
def gateway(tiny_models, workdir):
    entries = [
        {
            "name": name,
            "backend": backend,
            "model": str(tiny_models[key]),
            "device": TEST_DEVICE,
            "load": "on_demand",
        }
        for name, (backend, key) in MODELS.items()
    ]
    keys = [{"name": "admin", "key": ADMIN, "admin": True}, {"name": "user", "key": USER}]
    config = {
        "data_dir": str(workdir / "on-demand-inprocess"),
        "max_loaded_models": 1,
        "security": {"keys": keys},
        "models": entries,
    }
    with GatewayProcess(config, workdir).start() as process:
        yield process


def ask(gateway: GatewayProcess, name: str) -> str:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=USER, max_retries=0, timeout=300)
    reply = client.chat.completions.create(
        model=name,
        messages=[image_message("What is in the picture?", png_data_url(seed=3))],
        max_tokens=8,
        temperature=0,
    )
    return reply.choices[0].message.content or ""


def card(gateway: GatewayProcess, name: str) -> dict:
    answer = httpx.get(f"{gateway.url}/v1/models/{name}", headers=_auth(USER), timeout=10)
    return answer.json()["vlm_gateway"]


def states(gateway: GatewayProcess) -> dict[str, tuple[str, str]]:
    """Per model: the loader's word and its replica's state."""
    return {
        name: (info["loading"]["state"], info["replicas"][0]["state"])
        for name in MODELS
        for info in [card(gateway, name)]
    }


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_alternating_requests_swap_the_models_and_each_answers_alike(gateway):
    assert states(gateway) == {name: ("unloaded", "unloaded") for name in MODELS}
    first = {}
    for _ in range(2):
        for name in MODELS:
            answer = ask(gateway, name)
            assert first.setdefault(name, answer) == answer  # reloaded: the same greedy answer
            other = next(n for n in MODELS if n != name)
            assert states(gateway) == {name: ("loaded", "ready"), other: ("unloaded", "unloaded")}


def test_an_admin_unload_frees_the_model_and_the_next_request_loads_it_again(gateway):
    before = ask(gateway, "tiny-blip2")
    unloaded = httpx.post(
        f"{gateway.url}/v1/models/tiny-blip2/unload", headers=_auth(ADMIN), timeout=60
    )
    assert unloaded.status_code == 200, unloaded.text
    assert states(gateway)["tiny-blip2"] == ("unloaded", "unloaded")
    assert ask(gateway, "tiny-blip2") == before
    assert states(gateway)["tiny-blip2"] == ("loaded", "ready")
