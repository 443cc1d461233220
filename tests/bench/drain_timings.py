"""Measure the graceful drain of a real `vlm-gateway serve` (docs/reliability.md, "Graceful
drain"): time from SIGTERM to /ready 503, to the exit with nothing in flight, and to the exit
with a request held past `shutdown_grace` (and with one that finishes during the drain).

    .venv/bin/python -m tests.bench.drain_timings [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.support.held_upstream import HeldUpstream
from tests.support.processes import GatewayProcess

GRACE_S = 2.0
HI = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def one_round(workdir: Path, held: str) -> dict[str, float]:
    """held: 'none', 'cut' (held past the grace) or 'finishes' (released 0.5 s into it)."""
    with HeldUpstream() as upstream:
        config = {
            "data_dir": str(workdir / "data"),
            "shutdown_grace": GRACE_S,
            "models": [{"name": "m", "backend": "openai", "base_url": upstream.base_url}],
        }
        gateway = GatewayProcess(config, workdir).start()
        assert gateway.proc is not None
        answered: list[float] = []
        if held != "none":
            thread = threading.Thread(target=_post, args=(gateway.url, answered))
            thread.start()
            upstream.wait_arrivals(1)
        try:
            with httpx.Client(base_url=gateway.url, timeout=30) as probe:
                probe.get("/ready")
                start = time.monotonic()
                os.kill(gateway.proc.pid, signal.SIGTERM)
                while probe.get("/ready").status_code != 503:
                    pass
                ready_503 = time.monotonic() - start
            if held == "finishes":
                while time.monotonic() - start < 0.5:
                    time.sleep(0.01)
                upstream.release()
            gateway.proc.wait(60)
            exited = time.monotonic() - start
        finally:
            gateway.stop()
        result = {"ready_503_ms": ready_503 * 1000, "exit_s": exited}
        if answered:
            result["answered_s"] = answered[0] - start
        return result


def _post(url: str, answered: list[float]) -> None:
    httpx.post(url + "/v1/chat/completions", json=HI, timeout=60)
    answered.append(time.monotonic())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    for held in ("none", "finishes", "cut"):
        results = [one_round(Path(tempfile.mkdtemp()), held) for _ in range(rounds)]
        medians = {key: statistics.median(r[key] for r in results) for key in sorted(results[0])}
        worst = {key: max(r[key] for r in results) for key in sorted(results[0])}
        print(
            f"held request: {held:9} shutdown_grace {GRACE_S:g} s, {rounds} rounds; median "
            + ", ".join(f"{k} {v:.3f}" for k, v in medians.items())
            + "; worst "
            + ", ".join(f"{k} {v:.3f}" for k, v in worst.items())
        )


if __name__ == "__main__":
    main()
