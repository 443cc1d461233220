"""One gateway for the transformers kind's API-surface, bad-input and custom-code tests: the
tiny LLaVA-JoyCaption, Idefics3 and Qwen2-VL (each taking at most 2 images per request), and the
tiny custom-code model (MiniCPM-V's `chat`, tests/support/custom_code_model.py), with a data
directory for the Batch API."""

from __future__ import annotations

import httpx
import pytest

from tests.support.custom_code_model import write_custom_code_model
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
CUSTOM = "tiny-custom-chat"
CUSTOM_SYSTEM = "Answer in one line."


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
    custom = {
        "name": CUSTOM,
        "backend": "transformers",
        "model": str(write_custom_code_model(work / "custom-chat")),
        "trust_remote_code": True,
        "device": TEST_DEVICE,
        "system_prompt": CUSTOM_SYSTEM,
    }
    models.append(custom)
    # transformers copies the model's code into HF_MODULES_CACHE: kept out of the user's cache.
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(work / "modules")}
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
