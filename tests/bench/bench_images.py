"""Image path costs (not a pytest test; prints figures):

  1. per MB: base64 data URL passed through (validate, sniff, header, forward the same string)
     vs decoded and re-encoded (what a gateway that always normalises would pay);
  2. the fetch path's added latency for a 1 MB image from a loopback HTTP server: the same
     request resolved from an http:// URL vs sent inline as a data URL, and a bare httpx GET
     of the same bytes as the floor.

    .venv/bin/python -m tests.bench.bench_images [--rounds 30]

Rounds are interleaved (A, B, A, B, ...) so machine noise hits both sides alike.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import random
import statistics
import time

import httpx
from PIL import Image

from tests.support.image_server import ImageServer
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.images.decode import ImageLimits
from vlm_gateway.images.fetch import ImageFetcher
from vlm_gateway.images.resolve import ImageResolver, prepare_data_url

MB = 1024 * 1024


def photo_like(target_bytes: int, fmt: str) -> bytes:
    """A noisy gradient, sized so the encoded file is close to target_bytes."""
    rng = random.Random(0)
    side = 256
    while True:
        image = Image.linear_gradient("L").resize((side, side)).convert("RGB")
        noise = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
        image = Image.blend(image, noise, 0.35)
        out = io.BytesIO()
        image.save(out, format=fmt, quality=90) if fmt == "JPEG" else image.save(out, format=fmt)
        if out.tell() >= target_bytes:
            return out.getvalue()
        side = int(side * 1.15)


def decode_reencode(url: str) -> str:
    """The baseline a pass-through avoids: decode, convert, encode, base64 again."""
    data = base64.b64decode(url.partition(",")[2], validate=True)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        fmt = image.format
        rgb = image.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format=fmt, **({"quality": 92} if fmt == "JPEG" else {"compress_level": 3}))
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def bench_pass_through(rounds: int) -> None:
    limits = ImageLimits()
    print("1. data URL handling, per MB of image (median of interleaved rounds)")
    print(
        f"   {'format':6} {'size':>9} {'pass-through':>14} {'decode+re-encode':>18} "
        f"{'detail=low':>12} {'ratio':>7}"
    )
    for fmt in ("JPEG", "PNG"):
        data = photo_like(MB, fmt)
        url = f"data:image/{fmt.lower()};base64," + base64.b64encode(data).decode()
        assert prepare_data_url(url, "auto", limits, "x") is url  # really the fast path
        through, full, low = [], [], []
        for _ in range(rounds):
            through.append(timed(prepare_data_url, url, "auto", limits, "x"))
            full.append(timed(decode_reencode, url))
            low.append(timed(prepare_data_url, url, "low", limits, "x"))
        per_mb = MB / len(data) * 1000
        a, b, c = (statistics.median(x) * per_mb for x in (through, full, low))
        print(
            f"   {fmt:6} {len(data) / MB:7.2f}MB {a:11.2f} ms {b:15.2f} ms {c:9.2f} ms "
            f"{b / a:6.0f}x"
        )


async def bench_fetch(rounds: int) -> None:
    data = photo_like(MB, "JPEG")
    inline = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    settings = settings_model().model_validate(
        {
            "images": {
                "allowed_networks": ["127.0.0.1/32"],
                "cache_ttl": 0,
            },  # no cache: real fetches
            "models": [{"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        }
    )

    def request(url: str) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate(
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
                ],
            }
        )

    with ImageServer({"/photo.jpg": data}) as server:
        fetcher = ImageFetcher(settings.images)
        resolver = ImageResolver(settings.images, settings.image_limits, fetcher)
        async with httpx.AsyncClient(trust_env=False) as bare:
            samples = {"bare httpx GET": [], "data URL resolved": [], "http URL resolved": []}
            for round_index in range(rounds + 3):
                for name, work in (
                    ("bare httpx GET", bare.get(server.url("/photo.jpg"))),
                    ("data URL resolved", resolver.resolve(request(inline))),
                    ("http URL resolved", resolver.resolve(request(server.url("/photo.jpg")))),
                ):
                    started = time.perf_counter()
                    await work
                    if round_index >= 3:  # warm-up rounds: connections, thread pool
                        samples[name].append(time.perf_counter() - started)
        await fetcher.aclose()
    print(f"\n2. resolving one {len(data) / MB:.2f} MB JPEG, loopback server, {rounds} rounds")
    for name, values in samples.items():
        values.sort()
        print(
            f"   {name:18} p50 {values[len(values) // 2] * 1000:7.2f} ms   "
            f"p90 {values[int(len(values) * 0.9)] * 1000:7.2f} ms"
        )
    added = statistics.median(samples["http URL resolved"]) - statistics.median(
        samples["data URL resolved"]
    )
    print(f"   fetch path added latency (http URL - data URL, p50): {added * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    bench_pass_through(args.rounds)
    asyncio.run(bench_fetch(args.rounds))


if __name__ == "__main__":
    main()
