"""Throughput of `serve --workers N` on text (a script; figures in docs/benchmarks.md,
"Worker processes (issue 14)").

    .venv/bin/python -m tests.bench.bench_workers [--workers 1,2] [--seconds 8] [--rounds 3]
        [--concurrency 64] [--rate-limit]

The fixed-response fake upstream (tests/support/fake_upstream.py) and one gateway per worker
count run as their own processes on loopback, all started first; then each round runs
`wrk -t1` against every target in turn (direct, then each gateway), so drift from other load
on the machine lands on all of them. Figures are the median over rounds. --rate-limit turns on
a per-key limit too high to refuse anything, so one worker counts in its own dict and several
in their shared table (vlm_gateway/server/door/shared_limits.py). CPU/req: the CPU time of the
target's whole process group (supervisor and workers) over the requests wrk counted. The last
line is the table's own cost: one admission and its release, timed in this process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.bench.loadgen import run_load
from tests.bench.process_cpu import group_cpu_seconds
from tests.support.processes import REPO, free_port, stop_process_group, wait_http
from vlm_gateway.server.door.limits import _gateway_limit
from vlm_gateway.server.door.shared_limits import SharedUsageTable

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
MODEL = "ok"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def _popen(argv: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def start_upstream(workdir: Path) -> tuple[int, subprocess.Popen]:
    port = free_port()
    argv = [sys.executable, "-m", "tests.support.fake_upstream", "--port", str(port)]
    proc = _popen(argv, workdir / "upstream.log")
    wait_http(f"http://{HOST}:{port}/v1/models", 30, proc)
    return port, proc


def start_gateway(
    upstream_port: int, workers: int, workdir: Path, rate_limit: bool
) -> tuple[int, subprocess.Popen]:
    port = free_port()
    entry = {"name": MODEL, "backend": "openai", "base_url": f"http://{HOST}:{upstream_port}/v1"}
    config: dict = {"models": [entry], "access_log": False, "log_level": "warning"}
    config["data_dir"] = str(workdir / f"data-{port}")
    if rate_limit:
        config["security"] = {"requests_per_minute": 1_000_000_000}
    path = workdir / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "vlm_gateway", "serve", "--config", str(path)]
    argv += ["--host", HOST, "--port", str(port), "--workers", str(workers)]
    proc = _popen(argv, workdir / f"gateway-{port}.log")
    wait_http(f"http://{HOST}:{port}/ready", 120, proc)
    return port, proc


def table_cost_us(calls: int = 200_000) -> float:
    """µs for one admission and its release in the shared table (flock, mmap reads/writes)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "table"
        SharedUsageTable.create(path, workers=2)
        table = SharedUsageTable(path, 0)
        limits = [_gateway_limit(1_000_000_000, 1_000_000)]
        start = time.perf_counter()
        for _ in range(calls):
            table.admit("addr:127.0.0.1", "c", limits, time.monotonic())
            table.release("addr:127.0.0.1")
        elapsed = time.perf_counter() - start
        table.close()
    return elapsed / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate-limit", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    procs: list[subprocess.Popen] = []
    try:
        upstream_port, upstream = start_upstream(workdir)
        procs.append(upstream)
        targets = {"direct": upstream_port}
        groups = {"direct": upstream.pid}
        for n in counts:
            port, proc = start_gateway(upstream_port, n, workdir, args.rate_limit)
            procs.append(proc)
            targets[f"gateway --workers {n}"] = port
            groups[f"gateway --workers {n}"] = proc.pid
        for port in targets.values():  # warm up every path once
            run_load(HOST, port, PATH, BODY, 4, 1, workdir, "wrk")
        rps: dict[str, list[float]] = {name: [] for name in targets}
        cpu_us: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, port in targets.items():
                cpu_before = group_cpu_seconds(groups[name])
                result = run_load(HOST, port, PATH, BODY, args.concurrency, args.seconds, workdir)
                cpu = group_cpu_seconds(groups[name]) - cpu_before
                if result.errors:
                    print(f"{name}: {result.errors} errors", file=sys.stderr)
                rps[name].append(result.rps)
                cpu_us[name].append(cpu / max(1, result.requests) * 1e6)
        _report(args, counts, rps, cpu_us)
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)
    print(f"shared rate-limit table: {table_cost_us():.1f} µs per admission + release")


def _report(
    args: argparse.Namespace,
    counts: list[int],
    rps: dict[str, list[float]],
    cpu_us: dict[str, list[float]],
) -> None:
    print(
        f"{os.cpu_count()} cores, wrk -t1 -c{args.concurrency}, {args.rounds} rounds x "
        f"{args.seconds:g} s, rate limit {'on' if args.rate_limit else 'off'}"
    )
    one = statistics.median(rps[f"gateway --workers {counts[0]}"])
    for name, values in rps.items():
        median = statistics.median(values)
        spread = f"{min(values):.0f}-{max(values):.0f}"
        ratio = f"  x{median / one:.2f} of --workers {counts[0]}" if name != "direct" else ""
        cpu = statistics.median(cpu_us[name])
        print(f"  {name:22s} {median:8.0f} req/s  (rounds {spread}){ratio}  {cpu:.0f} µs CPU/req")


if __name__ == "__main__":
    main()
