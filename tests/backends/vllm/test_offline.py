"""backends/vllm/offline.py on its own: finding vLLM's interpreter, the engine's flags, and a
worker that dies mid-run (its callers get an error at once, never a stall)."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.support import fake_offline_worker
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.backends.vllm import offline
from vlm_gateway.backends.vllm.offline import (
    OfflineEngine,
    OfflineEngineError,
    OfflineRequest,
    engine_flags,
    vllm_python,
)
from vlm_gateway.backends.vllm.processes import media_flags
from vlm_gateway.backends.vllm.settings import VllmBackendSettings
from vlm_gateway.images.decode import ImageLimits
from vlm_gateway.images.pool import ImagePreparer


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_the_python_beside_a_venvs_vllm(tmp_path):
    vllm = executable(tmp_path / "venv/bin/vllm", "#!/somewhere/else/python\n")
    python = executable(tmp_path / "venv/bin/python", "")
    assert vllm_python([str(vllm)]) == str(python)


def test_the_python_of_a_scripts_shebang(tmp_path):
    vllm = executable(tmp_path / "bin/vllm", f"#!{sys.executable}\nimport vllm\n")
    assert vllm_python([str(vllm)]) == sys.executable


def test_no_python_found(tmp_path):
    assert vllm_python([str(tmp_path / "missing")]) is None
    vllm = executable(tmp_path / "bin/vllm", "#!/no/such/python\n")
    assert vllm_python([str(vllm)]) is None
    assert vllm_python([sys.executable, "-m", "vllm.entrypoints.cli.main"]) == sys.executable


def entry(**extra: object) -> VllmBackendSettings:
    fields = {"name": "m", "backend": "vllm", "model": "/models/m", "stop_grace": 5.0}
    return VllmBackendSettings.model_validate(fields | extra)


def test_engine_flags_follow_the_entry():
    flags = engine_flags(
        entry(max_model_len=2048, gpu_memory_utilization=0.4, extra_args=["--max-num-seqs", "8"]),
        "/spool",
    )
    assert flags == [
        "--allowed-local-media-path",
        "/spool",
        "--max-model-len",
        "2048",
        "--gpu-memory-utilization",
        "0.4",
        "--enable-prefix-caching",
        "--max-num-seqs",
        "8",
    ]
    assert "--enable-prefix-caching" not in engine_flags(entry(enable_prefix_caching=False), "/s")


def test_the_offline_engine_samples_videos_as_the_served_model_does():
    settings = settings_model().model_validate(
        {
            "media": {"video": {"num_frames": 8}},
            "models": [
                {
                    "name": "m",
                    "backend": "vllm",
                    "model": "/models/m",
                    "input_modalities": ["text", "video"],
                }
            ],
        }
    )
    (model,) = settings.models
    flags = engine_flags(model, "/spool", media_flags(settings, model))
    assert flags[2:7] == [
        "--limit-mm-per-prompt",
        '{"video":1}',
        "--trust-request-mm-kwargs",
        "--media-io-kwargs",
        '{"video":{"num_frames":8}}',
    ]


def jpeg(path: Path, size: tuple[int, int]) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, format="JPEG")
    path.write_bytes(out.getvalue())
    return str(path)


LIMITS = ImageLimits(max_bytes=1 << 24, max_pixels=1 << 26, min_side=1, resize=(32, 32))


async def start_fake(tmp_path: Path, monkeypatch, die_after: int | None) -> OfflineEngine:
    monkeypatch.setattr(offline, "WORKER", Path(fake_offline_worker.__file__))
    engine = OfflineEngine(entry(), sys.executable, ImagePreparer(0), tmp_path / "w.log")
    request = OfflineRequest("Caption:", 8, 0.0, 64)
    if die_after is not None:
        request.__dict__["die_after"] = die_after  # the fake reads it from the config line
    await engine.start(request)
    return engine


def test_images_are_prepared_into_the_spool_and_captioned(tmp_path, monkeypatch):
    big = jpeg(tmp_path / "big.jpg", (640, 480))

    async def scenario() -> tuple[dict, list[str]]:
        engine = await start_fake(tmp_path, monkeypatch, None)
        try:
            reply = await engine.caption(big, LIMITS, "The image")
            return reply, os.listdir(engine._spool.name)
        finally:
            await engine.stop()

    reply, left = asyncio.run(scenario())
    # The worker got the shrunk JPEG (a few hundred bytes), not the original file.
    assert reply["caption"] != f"{os.path.getsize(big)} bytes"
    assert int(reply["caption"].split()[0]) < os.path.getsize(big)
    assert left == []  # spooled files go once answered


def test_a_worker_that_dies_fails_its_callers_at_once(tmp_path, monkeypatch):
    photos = [jpeg(tmp_path / f"{i}.jpg", (40, 30)) for i in range(6)]

    async def scenario() -> list[object]:
        engine = await start_fake(tmp_path, monkeypatch, die_after=3)
        try:
            calls = [engine.caption(p, LIMITS, "The image") for p in photos]
            # Only a guard against the stall this test is about, never a speed bound.
            everything = asyncio.gather(*calls, return_exceptions=True)
            return await asyncio.wait_for(everything, 120)
        finally:
            await engine.stop()

    results = asyncio.run(scenario())
    assert any(isinstance(r, dict) and "caption" in r for r in results)
    failures = [r for r in results if isinstance(r, OfflineEngineError)]
    assert failures and "exited with code 3" in str(failures[0])
    with pytest.raises(OfflineEngineError, match="stopped"):
        raise failures[-1]
