"""BLIP-2 dynamic micro-batching vs one request at a time (not a pytest test; prints figures).

Two real gateways serve the same tiny random BLIP-2 on CPU: one with `max_batch_size: 16`
(dynamic batching) and one with `max_batch_size: 1` (the seeds' loop: one image at a time).
The same client (wrk when installed) sends captioning requests at concurrency 16 to each, in
interleaved rounds (A, B, A, B, ...) so machine noise hits both alike, and reports images/s and
the ratio. Then it times GET /health while the batched gateway is under that load (the event
loop must stay free while a batch generates: milliseconds, on a shared 2-core CI machine).

    .venv/bin/python -m tests.bench.bench_blip2_batching [--rounds 5] [--seconds 8]
        [--concurrency 16] [--max-tokens 32] [--model DIR] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.bench.loadgen import run_load
from tests.support.images import image_message, png_data_url
from tests.support.processes import GatewayProcess


def gateway_config(model_dir: Path, max_batch_size: int, device: str) -> dict:
    return {
        "access_log": False,
        "log_level": "warning",
        "models": [
            {
                "name": "blip2",
                "backend": "blip2",
                "model": str(model_dir),
                "device": device,
                "max_batch_size": max_batch_size,
                "batch_wait_ms": 5,
            },
        ],
    }


def run_round(port: int, seconds: float, concurrency: int, max_tokens: int, workdir: Path) -> float:
    """Images per second: captioning requests sent back to back on `concurrency` connections
    by wrk (or the project's raw-socket client), so the client costs next to nothing."""
    body = {
        "model": "blip2",
        "max_tokens": max_tokens,
        "temperature": 0,
        "messages": [image_message(None, png_data_url(seed=1))],
    }
    result = run_load(
        "127.0.0.1", port, "/v1/chat/completions", body, concurrency, seconds, workdir
    )
    if result.errors:
        raise RuntimeError(f"{result.errors} requests failed")
    return result.rps


def health_during_load(
    gateway: GatewayProcess, seconds: float, concurrency: int, max_tokens: int, workdir: Path
) -> list[float]:
    """Seconds per GET /health, sampled while a captioning round runs against `gateway`."""
    latencies = []
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=gateway.url) as http:
        load = pool.submit(run_round, gateway.port, seconds, concurrency, max_tokens, workdir)
        while not load.done():
            start = time.perf_counter()
            http.get("/health").raise_for_status()
            latencies.append(time.perf_counter() - start)
            time.sleep(0.003)
        load.result()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="per side and round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", type=Path, help="a BLIP-2 directory (default: tiny, built)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (dtype: auto)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-blip2-"))
    model_dir = args.model
    if model_dir is None:
        from vlm_gateway.cli.tiny_models import ensure_tiny_models

        model_dir = ensure_tiny_models(workdir / "models")["blip2"]
    sides = {"batched (max_batch_size 16)": 16, "one at a time (max_batch_size 1)": 1}
    figures: dict[str, list[float]] = {name: [] for name in sides}
    gateways = {
        name: GatewayProcess(gateway_config(model_dir, size, args.device), workdir)
        for name, size in sides.items()
    }
    try:
        for gateway in gateways.values():
            gateway.start(deadline_s=180)
        for gateway in gateways.values():  # warm-up: first-call allocations, caches
            run_round(gateway.port, 1, args.concurrency, 4, workdir)
        for round_index in range(args.rounds):
            for name, gateway in gateways.items():
                figures[name].append(
                    run_round(
                        gateway.port, args.seconds, args.concurrency, args.max_tokens, workdir
                    )
                )
            print(
                f"round {round_index + 1}: "
                + ", ".join(
                    f"{name.split(' (')[0]} {values[-1]:.1f}" for name, values in figures.items()
                ),
                flush=True,
            )
        batched_gateway = next(iter(gateways.values()))
        health = health_during_load(
            batched_gateway, args.seconds, args.concurrency, args.max_tokens, workdir
        )
    finally:
        for gateway in gateways.values():
            gateway.stop()

    print(
        f"BLIP-2 {model_dir.name} on {args.device}, captioning for {args.seconds:g} s x "
        f"{args.rounds} rounds per side, concurrency {args.concurrency}, "
        f"{args.max_tokens} tokens each"
    )
    for name, values in figures.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {name:34s} median {statistics.median(values):7.1f} images/s  ({rounds})")
    batched, single = figures.values()
    # Each round's pair ran back to back: their ratio is steadier than the medians' on a
    # machine shared with other work.
    paired = [b / s for b, s in zip(batched, single, strict=True)]
    medians_ratio = statistics.median(batched) / statistics.median(single)
    print(
        f"  ratio batched / one at a time: {medians_ratio:.2f}x"
        f" of the medians; per round {', '.join(f'{r:.1f}x' for r in paired)}, "
        f"median {statistics.median(paired):.2f}x (target >= 4x)"
    )
    ms = sorted(1000 * s for s in health)
    print(
        f"  GET /health under batched load: median {statistics.median(ms):.1f} ms, "
        f"p99 {ms[int(0.99 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms over {len(ms)} "
        "requests (target: median < 50 ms, max < 500 ms)"
    )


if __name__ == "__main__":
    main()
