"""The commands around the blip2 backend: `vlm-gateway tiny-model DIR`, and `vlm-gateway serve`
with no config (BLIP-2 in-process, or a short message when its weights cannot be had)."""

from __future__ import annotations

import os
import subprocess
import sys

import openai
import pytest

from tests.support.images import image_message, png_data_url
from tests.support.processes import REPO, free_port, stop_process_group, wait_http

pytest.importorskip("torch")


def vlm_gateway(*args: str, env: dict | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "vlm_gateway", *args],
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_tiny_model_writes_a_blip2_that_transformers_loads(tmp_path):
    result = vlm_gateway("tiny-model", str(tmp_path / "tiny"))
    assert result.returncode == 0, result.stderr
    assert "noise" in result.stdout
    from transformers import Blip2ForConditionalGeneration

    model = Blip2ForConditionalGeneration.from_pretrained(tmp_path / "tiny")
    assert model.config.num_query_tokens == 4


def test_tiny_model_refuses_a_directory_with_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = vlm_gateway("tiny-model", str(tmp_path))
    assert result.returncode == 1
    assert "not empty" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_serve_without_config_or_weights_says_what_is_missing(tmp_path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = vlm_gateway("serve", "--port", str(free_port()), env=offline, timeout=60)
    assert result.returncode == 1
    message = result.stderr
    assert "Salesforce/blip2-opt-2.7b" in message and "not in the local" in message
    assert "--model" in message
    assert len(message.splitlines()) <= 8  # short, no traceback
    assert "Traceback" not in message


def test_serve_without_config_serves_blip2_from_model_dir(tiny_models, workdir):
    port = free_port()
    log_path = workdir / f"serve-default-{port}.log"
    argv = [
        sys.executable,
        "-m",
        "vlm_gateway",
        "serve",
        "--model",
        str(tiny_models["blip2"]),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/ready", 120, proc, log_path)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        assert [m.id for m in client.models.list()] == ["blip2"]
        answer = client.chat.completions.create(
            model="blip2", messages=[image_message(None, png_data_url())], max_tokens=3
        )
        assert answer.usage.completion_tokens == 3
    finally:
        stop_process_group(proc)
