"""`quantization: 4bit | 8bit` where bitsandbytes is installed but no CUDA GPU is: check-config
plans it, and the model fails at start with the reason on /ready while the gateway serves on.
(The CUDA path itself needs a GPU: docs/transformers.md, "4- and 8-bit weights".)

bitsandbytes is not installed here: an empty stand-in package on PYTHONPATH makes it importable,
which is all the gateway asks of it before it finds there is no GPU."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.support.check_config import check_config
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU would load it")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    packages = tmp_path_factory.mktemp("stand-in")
    (packages / "bitsandbytes").mkdir()
    (packages / "bitsandbytes" / "__init__.py").write_text('"""A stand-in: importable only."""\n')
    path = os.pathsep.join(p for p in (str(packages), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


@pytest.fixture(scope="module")
def config(tiny_models):
    entry = {"backend": "transformers", "model": str(tiny_models["llava-joycaption"])}
    return {"models": [{**entry, "name": "quantized", "quantization": "4bit"}]}


def test_check_config_plans_the_quantized_weights(config, env, tmp_path):
    plan = check_config(config, tmp_path, env)
    assert plan.returncode == 0, plan.stderr
    assert "device: auto, dtype: auto, quantization: 4bit" in plan.stdout
    assert "parameters: 252,544 (252.5 K); weights about 0.1 MB at 4 bits" in plan.stdout


def test_without_a_cuda_gpu_the_model_fails_at_start_with_the_reason(config, env, workdir):
    with GatewayProcess(config, workdir, env).start(wait_ready=False) as gateway:
        reason = wait_until(lambda: _failed(gateway.url), "the load to fail", deadline_s=120)
        assert "quantization 4bit needs a CUDA GPU (bitsandbytes)" in reason
        assert "the model would run on cpu" in reason
        assert httpx.get(gateway.url + "/health", timeout=5).status_code == 200


def _failed(url: str) -> str | None:
    model = httpx.get(url + "/ready", timeout=5).json()["models"]["quantized"]
    return model["replicas"][0]["reason"] if model["state"] == "failed" else None
