"""`caption` with the offline engine over videos and audio files, the engine a stand-in
(tests/support/fake_offline_worker.py) so it runs without vLLM: each file is checked by the
gateway's own resolver (a broken one gets the gateway path's error line) and what passes
reaches the worker spooled as it is, with its modality."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.cli.test_caption import read_out
from tests.support import fake_offline_worker
from tests.support.images import png_bytes
from tests.support.media import truncated_mp4, video_bytes, wav_bytes
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.backends.vllm import offline
from vlm_gateway.cli.caption import CaptionJob, run_caption
from vlm_gateway.cli.caption_files import KINDS, collect


def settings(tmp_path: Path, modalities: list[str]):
    entry = {
        "name": "m",
        "backend": "vllm",
        "model": str(tmp_path / "no-model"),
        "command": [sys.executable],  # its python runs the stand-in worker
        "input_modalities": modalities,
    }
    return settings_model().model_validate({"data_dir": str(tmp_path / "d"), "models": [entry]})


def run(tmp_path: Path, monkeypatch, modalities: list[str]) -> tuple[dict[str, dict], dict]:
    monkeypatch.setattr(offline, "WORKER", Path(fake_offline_worker.__file__))
    root = tmp_path / "media"
    root.mkdir()
    files = {
        "image": root / "photo.png",
        "video": root / "clip.bin",  # an mp4 by content: spooled as .mp4
        "audio": root / "tone.wav",
        "cut": root / "cut.mp4",
    }
    files["image"].write_bytes(png_bytes(seed=3))
    files["video"].write_bytes(video_bytes())
    files["audio"].write_bytes(wav_bytes())
    files["cut"].write_bytes(truncated_mp4())
    found = collect([root], frozenset(KINDS))
    out = tmp_path / "out.jsonl"
    job = CaptionJob(found.sources, "m", out, engine="offline", media=found.media)
    summary = asyncio.run(run_caption(job, settings=settings(tmp_path, modalities)))
    assert summary.total == 4
    return {Path(r["image"]).name: r for r in read_out(out)}, files


def test_videos_and_audio_reach_the_worker_checked(tmp_path, monkeypatch):
    records, files = run(tmp_path, monkeypatch, ["text", "image", "video", "audio"])
    video = len(files["video"].read_bytes())
    assert records["clip.bin"]["caption"] == f"video .mp4 {video} bytes"
    assert records["clip.bin"]["media"] == "video"
    assert records["tone.wav"]["caption"] == f"audio .wav {len(wav_bytes())} bytes"
    assert records["photo.png"]["caption"].endswith(" bytes")  # the image path, unchanged
    assert "media" not in records["photo.png"]
    cut = records["cut.mp4"]
    assert cut["caption"] is None
    assert cut["error"].startswith("HTTP 400: The video in messages[0].content[0]")


def test_a_model_that_takes_no_video_gets_the_gateways_400(tmp_path, monkeypatch):
    records, _ = run(tmp_path, monkeypatch, ["text", "image"])
    for name in ("clip.bin", "cut.mp4"):
        assert records[name]["error"].startswith(
            "HTTP 400: The model 'm' does not take video input"
        )
    assert records["tone.wav"]["error"].startswith("HTTP 400: The model 'm' does not take audio")
    assert records["photo.png"]["error"] is None
