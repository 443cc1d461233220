"""`backend: transformers` entries in a config, as `vlm-gateway check-config` reads them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.support.check_config import check_config as run_check_config
from tests.support.processes import REPO


def check_config(tmp_path, entry: dict) -> subprocess.CompletedProcess:
    model = {"name": "joy", "backend": "transformers", "model": "org/some-vlm", **entry}
    return run_check_config({"models": [model]}, tmp_path)


def test_check_config_prints_the_plan(tmp_path):
    result = check_config(tmp_path, {"dtype": "float16", "device": "cuda:1", "revision": "v2"})
    assert result.returncode == 0, result.stderr
    assert "backend transformers, in this process -> org/some-vlm @ v2" in result.stdout
    assert "device: cuda:1, dtype: float16" in result.stdout
    assert "trust_remote_code" not in result.stdout
    assert "batches of up to 16" in result.stdout


def test_check_config_says_the_model_s_cpu_threads(tmp_path):
    result = check_config(tmp_path, {"device": "cpu", "cpu_threads": 3})
    assert result.returncode == 0, result.stderr
    assert "CPU threads: 3" in result.stdout
    refused = check_config(tmp_path, {"cpu_threads": 0})
    assert refused.returncode != 0
    assert "models[0].cpu_threads" in refused.stdout + refused.stderr


def test_check_config_warns_about_remote_code(tmp_path):
    result = check_config(tmp_path, {"trust_remote_code": True})
    assert result.returncode == 0, result.stderr
    assert "warning: trust_remote_code is true" in result.stdout


def test_check_config_refuses_an_unknown_device(tmp_path):
    result = check_config(tmp_path, {"device": "tpu"})
    assert result.returncode != 0
    assert "device" in result.stdout + result.stderr


def test_the_examples_pass_check_config_with_the_seed_s_settings():
    def plan(name: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "vlm_gateway", "check-config", f"examples/{name}"],
            cwd=REPO,
            text=True,
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    joycaption = plan("joycaption-transformers.yaml")
    assert "-> fancyfeast/llama-joycaption-alpha-two-hf-llava" in joycaption
    assert "dtype: float16" in joycaption and "batches of up to 16" in joycaption
    assert "generation defaults: temperature 0.6, top_p 0.9, max_new_tokens 300" in joycaption
    assert "-> Qwen/Qwen2.5-VL-3B-Instruct" in plan("qwen2.5-vl-transformers.yaml")
    assert "-> HuggingFaceTB/SmolVLM-256M-Instruct" in plan("smolvlm-transformers.yaml")


def test_check_config_prints_the_generation_defaults_and_refuses_unknown_keys(tmp_path):
    plan = check_config(tmp_path, {"generation": {"temperature": 0.6, "top_p": 0.9}})
    assert plan.returncode == 0, plan.stderr
    assert "generation defaults: temperature 0.6, top_p 0.9 (over the model's own)" in plan.stdout
    typo = check_config(tmp_path, {"generation": {"temprature": 0.6}})
    assert typo.returncode != 0
    assert "generation.temprature" in typo.stdout + typo.stderr
    wrong = check_config(tmp_path, {"generation": {"top_p": 1.5}})
    assert wrong.returncode != 0 and "generation.top_p" in wrong.stdout + wrong.stderr


def test_check_config_refuses_two_token_defaults(tmp_path):
    both = check_config(tmp_path, {"default_max_tokens": 300, "generation": {"max_new_tokens": 9}})
    assert both.returncode != 0
    assert "set one" in both.stdout + both.stderr


def test_check_config_says_parameters_are_counted_at_load_for_weights_not_here(tmp_path):
    plan = check_config(tmp_path, {})
    assert "parameters: counted at load (no safetensors weights of it on this machine" in (
        plan.stdout
    )


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="installed here")
def test_quantization_without_bitsandbytes_is_refused_with_the_extra_to_install(tmp_path):
    result = check_config(tmp_path, {"quantization": "4bit"})
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert "quantization 4bit needs bitsandbytes" in said
    assert "pip install 'vlm-gateway[quantization]'" in said


def test_quantization_on_the_cpu_is_refused(tmp_path):
    result = check_config(tmp_path, {"quantization": "8bit", "device": "cpu"})
    assert result.returncode != 0
    assert "quantization 8bit needs a CUDA GPU" in result.stdout + result.stderr


def test_a_one_image_architecture_takes_one_image_unless_the_entry_says(tmp_path, tiny_models):
    """BLIP-2's config says model_type blip-2: one image per request, as vLLM has it."""
    blip2 = str(tiny_models["blip2"])
    assert "images: at most 1 per request" in check_config(tmp_path, {"model": blip2}).stdout
    llava = check_config(tmp_path, {"model": str(tiny_models["llava"])}).stdout
    assert "images: at most 8 per request" in llava  # the `images:` default
    widened = check_config(tmp_path, {"model": blip2, "images": {"max_images": 3}}).stdout
    assert "images: at most 3 per request" in widened
