"""The gateway's other doors with `backend: transformers`, on each tiny model (LLaVA-JoyCaption,
Idefics3, Qwen2-VL), each through its own official client: the Batch API (openai SDK),
`vlm-gateway caption` over a folder, the Responses API (openai SDK) and the Messages API
(anthropic SDK). The models' words are noise: these tests check that every door gives the
answer the chat route gives, with its counts."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import anthropic
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletion

from tests.backends.transformers.conftest import MODELS, SYSTEM
from tests.server.batch.batch_support import jsonl, result_lines, wait_final
from tests.support.images import image_message, png_bytes, png_data_url
from tests.support.processes import REPO
from tests.support.torch_device import TEST_DEVICE

pytest.importorskip("torch")

QUESTION = "Describe the picture."
MAX_TOKENS = 8
NAMES = list(MODELS.values())


@pytest.fixture(scope="module")
def client(tf_gateway):
    return openai.OpenAI(base_url=tf_gateway.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def claude(tf_gateway):
    return anthropic.Anthropic(base_url=tf_gateway.url, api_key="unused", max_retries=0)


def chat_answer(client, name: str, image_seed: int, text: str = QUESTION) -> ChatCompletion:
    return client.chat.completions.create(
        model=name,
        messages=[image_message(text, png_data_url(seed=image_seed))],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )


@pytest.mark.parametrize("name", NAMES)
def test_batch_api_answers_each_line_as_the_chat_route_does(client, name):
    def line(custom_id: str, seed: int, url: str | None = None) -> dict:
        body = {
            "model": name,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "messages": [image_message(QUESTION, url or png_data_url(seed=seed))],
        }
        return {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": body,
        }

    lines = [line(f"img-{seed}", seed) for seed in range(4)]
    broken = line("broken", 0, url="data:image/png;base64,AAAA")
    file = client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([*lines, broken]))), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_final(client, batch.id, deadline_s=240)
    assert batch.status == "completed", batch
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (5, 4, 1)
    output = {o["custom_id"]: o for o in result_lines(client, batch.output_file_id)}
    assert sorted(output) == [f"img-{seed}" for seed in range(4)]
    for seed in range(4):
        reply = ChatCompletion.model_validate(output[f"img-{seed}"]["response"]["body"])
        expected = chat_answer(client, name, seed)
        assert reply.model == name
        assert reply.choices[0].message.content == expected.choices[0].message.content
        assert reply.usage == expected.usage
    [error] = result_lines(client, batch.error_file_id)
    assert error["custom_id"] == "broken" and error["response"]["status_code"] == 400


def photo_folder(root: Path) -> list[Path]:
    """Four images (one in a subfolder) and a corrupt one, which is last."""
    (root / "nested").mkdir(parents=True)
    paths = [root / ("nested" if seed % 2 else "") / f"{seed}.png" for seed in range(4)]
    for seed, path in enumerate(paths):
        path.write_bytes(png_bytes(seed=seed))
    (root / "corrupt.png").write_bytes(png_bytes(seed=9)[:40])
    return [*paths, root / "corrupt.png"]


def caption(folder: Path, name: str, out: Path, *how: str) -> dict[str, dict]:
    argv = [sys.executable, "-m", "vlm_gateway", "caption", str(folder), "--model", name]
    argv += ["--out", str(out), "--max-tokens", str(MAX_TOKENS), "--prompt", QUESTION, *how]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return {r["image"]: r for r in map(json.loads, out.read_text().splitlines())}


def assert_captions_are_the_chat_answers(records, paths, client, name) -> None:
    assert sorted(records) == sorted(map(str, paths))
    assert records.pop(str(paths[-1]))["error"]  # the corrupt one
    for seed, path in enumerate(paths[:-1]):
        record = records[str(path)]
        assert record["error"] is None and record["model"] == name
        # caption sends the image file as it is (a PNG data URL): the chat route's answer.
        assert record["caption"] == chat_answer(client, name, seed).choices[0].message.content


@pytest.mark.parametrize("name", NAMES)
def test_caption_a_folder_through_the_gateway(tf_gateway, client, name, tmp_path):
    paths = photo_folder(tmp_path / "photos")
    records = caption(tmp_path / "photos", name, tmp_path / "out.jsonl", "--url", tf_gateway.url)
    assert_captions_are_the_chat_answers(records, paths, client, name)


def test_caption_in_process_from_a_config(client, tiny_models, tmp_path):
    """No server: caption runs the gateway, and the model, in its own process."""
    name = MODELS["llava-joycaption"]
    entry = {
        "name": name,
        "backend": "transformers",
        "model": str(tiny_models["llava-joycaption"]),
        "device": TEST_DEVICE,
        "system_prompt": SYSTEM,
    }
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "models": [entry]}))
    paths = photo_folder(tmp_path / "photos")
    records = caption(tmp_path / "photos", name, tmp_path / "out.jsonl", "--config", str(config))
    assert_captions_are_the_chat_answers(records, paths, client, name)


@pytest.mark.parametrize("name", NAMES)
def test_responses_api_json_and_stream_carry_the_chat_answer(client, name):
    expected = chat_answer(client, name, 2)
    content = [
        {"type": "input_image", "image_url": png_data_url(seed=2)},
        {"type": "input_text", "text": QUESTION},
    ]
    fields = {
        "model": name,
        "input": [{"role": "user", "content": content}],
        "max_output_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    answer = client.responses.create(**fields)
    assert answer.output_text == expected.choices[0].message.content
    assert answer.usage.input_tokens == expected.usage.prompt_tokens  # image tokens included
    assert answer.usage.output_tokens == expected.usage.completion_tokens
    assert answer.status == (
        "incomplete" if expected.choices[0].finish_reason == "length" else "completed"
    )
    # The SDK's stream helper wants `response.completed`; a cut answer ends `incomplete`.
    events = list(client.responses.create(**fields, stream=True))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    final = events[-1].response
    assert "".join(deltas) == final.output_text == answer.output_text
    assert final.status == answer.status and final.usage == answer.usage
    assert len(deltas) > 1  # per token as generated, through the bridge


@pytest.mark.parametrize("name", NAMES)
def test_messages_api_json_and_stream_carry_the_chat_answer(client, claude, name):
    expected = chat_answer(client, name, 3)
    image = base64.b64encode(png_bytes(seed=3)).decode()
    blocks = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
        {"type": "text", "text": QUESTION},
    ]
    fields = {
        "model": name,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": blocks}],
        "extra_body": {"temperature": 0},
    }
    message = claude.messages.create(**fields)
    assert message.content[0].text == expected.choices[0].message.content
    assert message.usage.input_tokens == expected.usage.prompt_tokens
    assert message.usage.output_tokens == expected.usage.completion_tokens
    finish = expected.choices[0].finish_reason
    assert message.stop_reason == ("max_tokens" if finish == "length" else "end_turn")
    with claude.messages.stream(**fields) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == final.content[0].text == message.content[0].text
    assert len(pieces) > 1
