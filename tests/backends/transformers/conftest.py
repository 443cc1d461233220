"""One gateway for the transformers kind's API-surface and bad-input tests: the tiny
LLaVA-JoyCaption, Idefics3 and Qwen2-VL (each taking at most 2 images per request), with a data
directory for the Batch API."""

from __future__ import annotations

import httpx
import pytest

from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess
from tests.support.torch_device import TEST_DEVICE

SYSTEM = "You are a helpful image captioner."
# tiny_models key -> served name
MODELS = {
    "llava-joycaption": "tiny-joycaption",
    "idefics3": "tiny-idefics3",
    "qwen2vl": "tiny-qwen2vl",
}
MAX_IMAGES = 2


@pytest.fixture(scope="package")
def tf_gateway(tiny_models, tmp_path_factory):
    pytest.importorskip("torch")
    work = tmp_path_factory.mktemp("transformers-gateway")
    entry = {
        "backend": "transformers",
        "device": TEST_DEVICE,
        "batch_wait_ms": 50,
        "images": {"max_images": MAX_IMAGES},
    }
    models = [
        {**entry, "name": name, "model": str(tiny_models[key])}
        | ({"system_prompt": SYSTEM} if key == "llava-joycaption" else {})
        for key, name in MODELS.items()
    ]
    env = {"HF_HUB_OFFLINE": "1"}
    config = {"data_dir": str(work / "data"), "models": models}
    with GatewayProcess(config, work, env=env).start(wait_ready=False) as process:
        names = [model["name"] for model in models]
        wait_until(lambda: _all_ready(process.url, names), "the models to load", deadline_s=180)
        yield process


def _all_ready(url: str, names: list[str]) -> bool:
    models = httpx.get(url + "/ready", timeout=5).json()["models"]
    failed = [name for name in names if models[name]["replicas"][0].get("state") == "failed"]
    assert not failed, f"{failed} failed to load: {models}"
    return all(models[name]["ready"] for name in names)
