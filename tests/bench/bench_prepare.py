"""Image preparation costs (not a pytest test; prints figures): ms per image for 2400x1600
photo-like JPEGs (about 1.2 MB) made ready for a 224x224 model, and for 224x224 JPEGs that are
already model-sized:

  full decode            Image.open(...).convert("RGB"): what the seed's script and a
                         backend that decodes full-size images pay (and no smaller output)
  prepare                images/prepare.py: header check, draft() (DCT scaling), resize,
                         JPEG encode of the small result
each sequentially in this process ("no pool") and spread over an ImagePreparer's worker
processes ("pool", one per core; ms/image is wall time / images).

    .venv/bin/python -m tests.bench.bench_prepare [--images 16] [--rounds 5] [--workers N]
    .venv/bin/python -m tests.bench.bench_prepare --caption 64     # and end to end, see below

`--caption N` also runs `vlm-gateway caption` on N such photos with the tiny BLIP-2 in-process
(greedy, 8 new tokens) with `images.resize` none, 224x224 (what a real BLIP-2 gets) and auto
(the tiny model's own 30x30), and prints images/s of each.
Rounds are interleaved (every method once per round, in a rotating order) so machine noise
hits all of them alike; the figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from PIL import Image, ImageFilter

from tests.support.processes import REPO
from vlm_gateway.images.decode import ImageLimits
from vlm_gateway.images.pool import ImagePreparer, available_cores
from vlm_gateway.images.prepare import prepare_bytes_url

LIMITS = ImageLimits(resize=(224, 224))


def photo_like(width: int, height: int, seed: int) -> bytes:
    """Blurred noise over a gradient: compresses like a photo (about 1.2 MB at 2400x1600)."""
    rng = random.Random(seed)
    noise = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    gradient = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image = Image.blend(gradient, noise.filter(ImageFilter.GaussianBlur(1)), 0.5)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=92)
    return out.getvalue()


def full_decode(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as image:
        return len(image.convert("RGB").tobytes())


def prepare(data: bytes) -> int:
    return len(prepare_bytes_url(data, "auto", LIMITS, "The image"))


def sequential(function: Callable[[bytes], int], images: list[bytes]) -> float:
    started = time.perf_counter()
    for data in images:
        function(data)
    return (time.perf_counter() - started) * 1000 / len(images)


def pooled(preparer: ImagePreparer, function: Callable[[bytes], int], images: list[bytes]) -> float:
    async def run_all() -> None:
        await asyncio.gather(*(preparer.run("The image", function, data) for data in images))

    loop = asyncio.new_event_loop()
    try:
        started = time.perf_counter()
        loop.run_until_complete(run_all())
        return (time.perf_counter() - started) * 1000 / len(images)
    finally:
        loop.close()


def measure(images: list[bytes], rounds: int, workers: int) -> dict[str, list[float]]:
    preparer = ImagePreparer(workers)
    pooled(preparer, prepare, images[:workers])  # start the workers before timing
    methods: dict[str, Callable[[], float]] = {
        "full decode, no pool": lambda: sequential(full_decode, images),
        "full decode, pool": lambda: pooled(preparer, full_decode, images),
        "prepare, no pool": lambda: sequential(prepare, images),
        "prepare, pool": lambda: pooled(preparer, prepare, images),
    }
    figures: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            figures[name].append(methods[name]())
    asyncio.run(preparer.aclose())
    return figures


def report(title: str, images: list[bytes], figures: dict[str, list[float]]) -> None:
    mean_kb = sum(map(len, images)) / len(images) / 1024
    print(f"\n{title}: {len(images)} images, {mean_kb:.0f} KB each")
    print("| method | ms/image (median) | min | max |\n| --- | ---: | ---: | ---: |")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {min(values):.2f} | {max(values):.2f} |")
    out = prepare(images[0])
    print(f"prepared data URL: {out / 1024:.1f} KB (base64) for the first image")


def caption_rate(folder: Path, config: Path, out: Path) -> float:
    """images/s of one `vlm-gateway caption` run, as the command reports it."""
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "vlm_gateway", "caption", str(folder), "--model", "tiny"]
    argv += ["--config", str(config), "--out", str(out), "--max-tokens", "8"]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True)
    match = re.search(r"(\d+) captioned, (\d+) errors, .* in ([\d.]+) s", result.stderr)
    assert match is not None and match[2] == "0", result.stderr[-2000:]
    return int(match[1]) / float(match[3])


def bench_caption(count: int, rounds: int) -> None:
    from vlm_gateway.cli.tiny_models import ensure_tiny_models

    work = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    model = ensure_tiny_models(work / "models")["blip2"]
    folder = work / "photos"
    folder.mkdir()
    for seed in range(count):
        (folder / f"{seed:05d}.jpg").write_bytes(photo_like(2400, 1600, seed))
    configs = {}
    for resize in ("none", "224x224", "auto"):
        entry = {"name": "tiny", "backend": "blip2", "model": str(model), "device": "cpu"}
        entry["images"] = {"resize": resize}
        configs[resize] = work / f"{resize}.yaml"
        configs[resize].write_text(yaml.safe_dump({"models": [entry]}))
    rates: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(caption_rate(folder, configs[name], work / "out.jsonl"))
    print(f"\n`caption`, in-process tiny BLIP-2, {count} 2400x1600 photos, {rounds} rounds")
    print("| images.resize | images/s (median) | min | max |\n| --- | ---: | ---: | ---: |")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {min(values):.1f} | {max(values):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=available_cores())
    parser.add_argument("--caption", type=int, default=0, help="photos for the caption runs")
    args = parser.parse_args()
    print(f"workers: {args.workers} (cores here: {available_cores()})")
    photos = [photo_like(2400, 1600, seed) for seed in range(args.images)]
    report("2400x1600 photo-like JPEG", photos, measure(photos, args.rounds, args.workers))
    small = [photo_like(224, 224, seed) for seed in range(args.images)]
    report("224x224 JPEG (model-sized)", small, measure(small, args.rounds, args.workers))
    if args.caption:
        bench_caption(args.caption, min(args.rounds, 3))


if __name__ == "__main__":
    main()
