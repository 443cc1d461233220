"""BLIP-2 dynamic micro-batching vs one request at a time (not a pytest test; prints figures).

Two real gateways serve the same tiny random BLIP-2 on CPU: one with `max_batch_size: 16`
(dynamic batching) and one with `max_batch_size: 1` (the seeds' loop: one image at a time).
The same client (wrk when installed) sends captioning requests at concurrency 16 to each, in interleaved rounds
(A, B, A, B, ...) so machine noise hits both alike, and reports images/s and the ratio.

    .venv/bin/python -m tests.bench.bench_blip2_batching [--rounds 5] [--seconds 8]
        [--concurrency 16] [--max-tokens 32] [--model DIR] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

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
        for name, gateway in gateways.items():  # warm-up: first-call allocations, caches
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
    finally:
        for gateway in gateways.values():
            gateway.stop()

    print(
        f"BLIP-2 {model_dir.name} on {args.device}, captioning for {args.seconds:g} s x "
        f"{args.rounds} rounds per side, concurrency {args.concurrency}, {args.max_tokens} tokens each"
    )
    for name, values in figures.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {name:34s} median {statistics.median(values):7.1f} images/s  ({rounds})")
    batched, single = figures.values()
    # Each round's pair ran back to back: their ratio is steadier than the medians' on a
    # machine shared with other work.
    paired = [b / s for b, s in zip(batched, single)]
    print(
        f"  ratio batched / one at a time: {statistics.median(batched) / statistics.median(single):.2f}x"
        f" of the medians; per round {', '.join(f'{r:.1f}x' for r in paired)}, "
        f"median {statistics.median(paired):.2f}x (target >= 4x)"
    )


if __name__ == "__main__":
    main()
