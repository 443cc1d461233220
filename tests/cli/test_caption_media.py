"""`vlm-gateway caption` over videos and audio files, as a user runs it (a real subprocess, the
gateway in-process from --config, the fake upstream behind it): each file is sent as the part
its content calls for, a broken one is an error line with the gateway's 400, the run goes on,
and a rerun resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.cli.test_caption import caption, read_out
from tests.support.images import png_bytes
from tests.support.media import truncated_mp4, video_bytes, wav_bytes
from tests.support.settings import omni_upstream


@pytest.fixture
def config(upstream, tmp_path) -> Path:
    path = tmp_path / "gateway.yaml"
    model = omni_upstream(upstream.base_url)
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "models": [model]}))
    return path


def mixed_folder(root: Path) -> dict[str, Path]:
    files = {
        "image": root / "photo.png",
        "video": root / "clip.mp4",
        "renamed_video": root / "nested" / "clip.bin",  # an mp4 by content, not by name
        "audio": root / "tone.wav",
        "broken": root / "broken.mp4",  # text named .mp4: sent, refused, an error line
        "truncated": root / "cut.mp4",
    }
    files["renamed_video"].parent.mkdir(parents=True)
    files["image"].write_bytes(png_bytes(seed=1))
    files["video"].write_bytes(video_bytes())
    files["renamed_video"].write_bytes(video_bytes(seconds=0.5))
    files["audio"].write_bytes(wav_bytes())
    files["broken"].write_text("this is not a video\n" * 20)
    files["truncated"].write_bytes(truncated_mp4())
    (root / "notes.txt").write_text("neither media nor listed: left out")
    return files


def sent_parts(upstream) -> list[dict]:
    """The media part of every chat request the upstream got (the first part of each)."""
    return [body["messages"][0]["content"][0] for body in upstream.requests]


def test_a_mixed_folder_captions_every_kind(tmp_path, config, upstream):
    files = mixed_folder(tmp_path / "media")
    out = tmp_path / "captions.jsonl"
    upstream.clear()
    result = caption(
        tmp_path / "media",
        *("--model", "ok", "--out", out, "--config", config),
        *("--media", "image,video,audio"),
    )
    records = {r["image"]: r for r in read_out(out)}
    assert sorted(records) == sorted(str(path) for path in files.values())  # one line each
    for name in ("image", "video", "renamed_video", "audio"):
        assert records[str(files[name])]["caption"] == "hello", records[str(files[name])]
    assert "media" not in records[str(files["image"])]  # image lines as they always were
    assert records[str(files["video"])]["media"] == "video"
    assert records[str(files["renamed_video"])]["media"] == "video"
    assert records[str(files["audio"])]["media"] == "audio"
    broken, cut = records[str(files["broken"])], records[str(files["truncated"])]
    assert broken["caption"] is None and broken["error"].startswith("HTTP 400: The video in")
    assert "could not be read" in broken["error"]
    assert cut["caption"] is None and cut["error"].startswith("HTTP 400: The video in")
    assert "4 captioned, 2 errors" in result.stderr and "files/s" in result.stderr

    # What reached the upstream: data URLs under the right types, in the parts vLLM takes.
    parts = sent_parts(upstream)
    assert sorted(part["type"] for part in parts) == [
        "audio_url",
        "image_url",
        "video_url",
        "video_url",
    ]
    videos = [part["video_url"]["url"] for part in parts if part["type"] == "video_url"]
    assert all(url.startswith("data:video/mp4;base64,") for url in videos)
    audio = next(part["audio_url"]["url"] for part in parts if part["type"] == "audio_url")
    assert audio.startswith("data:audio/wav;base64,")


def test_a_rerun_tries_only_the_error_lines_again(tmp_path, config, upstream):
    files = mixed_folder(tmp_path / "media")
    out = tmp_path / "captions.jsonl"
    args = [tmp_path / "media", "--model", "ok", "--out", out, "--config", config]
    caption(*args, "--media", "video,audio,image")
    files["broken"].write_bytes(video_bytes())  # fixed between the runs
    upstream.clear()
    result = caption(*args, "--media", "video,audio,image")
    # The fixed file reaches the upstream; the truncated one is tried and refused again.
    assert [part["type"] for part in sent_parts(upstream)] == ["video_url"]
    assert "1 captioned, 1 errors, 4 already done (of 6)" in result.stderr
    records = {r["image"]: r for r in read_out(out)}
    assert len(read_out(out)) == 6 and records[str(files["broken"])]["caption"] == "hello"


def test_the_default_takes_images_and_says_what_it_left_out(tmp_path, config, upstream):
    files = mixed_folder(tmp_path / "media")
    out = tmp_path / "captions.jsonl"
    upstream.clear()
    result = caption(tmp_path / "media", "--model", "ok", "--out", out, "--config", config)
    assert [r["image"] for r in read_out(out)] == [str(files["image"])]
    assert [part["type"] for part in sent_parts(upstream)] == ["image_url"]
    assert "left out 1 audio file(s) and 3 video file(s) (--media image)" in result.stderr
    assert "--media image,video,audio takes them too" in result.stderr


def test_a_video_named_outright_is_taken_whatever_media_says(tmp_path, config, upstream):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(video_bytes())
    out = tmp_path / "captions.jsonl"
    caption(clip, "--model", "ok", "--out", out, "--config", config)
    assert read_out(out) == [
        {"image": str(clip), "caption": "hello", "model": "ok", "error": None, "media": "video"}
    ]


def test_a_model_without_video_gets_an_error_line_per_video(tmp_path, upstream):
    """The model's input_modalities decide, as for any client: the gateway's own 400."""
    config = tmp_path / "gateway.yaml"
    model = {"name": "ok", "backend": "openai", "base_url": upstream.base_url}
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "d"), "models": [model]}))
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(video_bytes())
    out = tmp_path / "captions.jsonl"
    caption(clip, "--model", "ok", "--out", out, "--config", config)
    [record] = read_out(out)
    assert record["error"].startswith("HTTP 400: The model 'ok' does not take video input")
