"""Gateway overhead: what the gateway adds over calling the upstream directly (a script).

    .venv/bin/python -m tests.bench.overhead [--rounds 5] [--requests 2000] [--seconds 4]
    .venv/bin/python -m tests.bench.overhead --matrix --seconds 6 [--workers 1,2] [--litellm BIN]

A fixed-response fake upstream (tests/support/fake_upstream.py) and the real gateway
(`vlm-gateway serve`) run as their own processes on loopback. The same clients hit the fake
directly (A) and through the gateway (B) in interleaved rounds (A B, then B A, ...), so drift
from other load on the machine lands on both; every figure is the median over rounds of the
per-round value, with the spread over rounds printed next to it.

  latency      sequential 1-token chat requests over one keep-alive connection (raw socket)
  stream       time to the first `data:` event of a streamed chat request, same client
  throughput   requests/s at --concurrency open connections (wrk -t1, or Python processes)
  CPU/request  each server process's own CPU time per request during the latency runs

--matrix (tests/bench/overhead_matrix.py) measures text and 337 KB image bodies at concurrency
1 and 64 instead, against direct, the gateway with 1 and 2 workers and LiteLLM's proxy;
--floor adds bare proxies with no gateway logic (tests/bench/bare_proxy.py) as columns.

See docs/benchmarks.md for figures and the profile of the request path.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench import overhead_matrix
from tests.bench.loadgen import RawClient, build_request, run_load
from tests.support.processes import REPO, GatewayProcess, free_port, stop_process_group, wait_http

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
MODEL = "ok"  # the fake's always-succeeding mode; the gateway serves it under the same name
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1}
STREAM = {**CHAT, "stream": True}
TARGETS = {"p50": 0.5, "p99": 2.0, "ratio": 0.97}
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    port: int
    pid: int
    load_tool: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)  # metric -> one per round

    def record(self, metric: str, value: float) -> None:
        self.samples.setdefault(metric, []).append(value)


# -- processes ----------------------------------------------------------------------------------


def start_fake(workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log_path = workdir / "fake-upstream.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_upstream", "--port", str(port)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_http(f"http://{HOST}:{port}/health", 30, proc, log_path)
    return proc, port


def gateway_config(upstream_port: int, access_log: bool) -> dict:
    """Shipped defaults but for the one model (and the access log, if asked)."""
    config = {
        "models": [
            {
                "name": MODEL,
                "backend": "openai",
                "upstream_model": MODEL,
                "base_url": f"http://{HOST}:{upstream_port}/v1",
            }
        ]
    }
    if not access_log:
        config["access_log"] = False
    return config


def cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads: schedstat (ns) where the kernel has it, else
    utime + stime (clock ticks, too coarse for the upstream's few microseconds per request)."""
    try:
        return (
            sum(
                int((task / "schedstat").read_text().split()[0])
                for task in Path(f"/proc/{pid}/task").iterdir()
            )
            / 1e9
        )
    except (OSError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- measurements -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sequential(target: Target, body: dict, count: int, warmup: int) -> tuple[list, list, float]:
    """`count` requests one after another on a fresh keep-alive connection (servers close
    idle ones): (first-event ms, total ms, server CPU s)."""
    request = build_request(HOST, target.port, PATH, body)
    client = RawClient(HOST, target.port)
    first, total = [], []
    gc.disable()  # our own collector pauses would land on one side at random
    try:
        for _ in range(warmup):
            client.exchange(request)
        cpu_before = cpu_seconds(target.pid)
        for _ in range(count):
            f, t = client.exchange(request)
            first.append(f / 1e6)
            total.append(t / 1e6)
        cpu = cpu_seconds(target.pid) - cpu_before
    finally:
        gc.enable()
        client.close()
    return first, total, cpu


def latency_round(target: Target, args: argparse.Namespace) -> None:
    _, total, cpu = sequential(target, CHAT, args.requests, args.warmup)
    target.record("p50", statistics.median(total))
    target.record("p99", percentile(total, 0.99))
    target.record("cpu_us", cpu / args.requests * 1e6)
    first, _, _ = sequential(target, STREAM, args.stream_requests, args.warmup // 4)
    target.record("ttfc", statistics.median(first))
    target.record("ttfc_p99", percentile(first, 0.99))


def throughput_round(target: Target, args: argparse.Namespace, workdir: Path) -> None:
    result = run_load(
        HOST,
        target.port,
        PATH,
        CHAT,
        args.concurrency,
        args.seconds,
        workdir,
        args.load_tool,
        args.load_procs,
    )
    if result.errors:
        print(f"  {target.name}: {result.errors} failed requests under load", file=sys.stderr)
    target.record("rps", result.rps)
    target.record("load_errors", result.errors)
    target.load_tool = result.tool


def interleaved(direct: Target, gateway: Target, rounds: int, measure) -> None:
    for i in range(rounds):
        for target in (direct, gateway) if i % 2 == 0 else (gateway, direct):
            measure(target)
        print(f"  round {i + 1}/{rounds} done", file=sys.stderr, flush=True)


# -- report -------------------------------------------------------------------------------------


def added(direct: Target, gateway: Target, metric: str) -> list[float]:
    return [g - d for d, g in zip(direct.samples[metric], gateway.samples[metric], strict=True)]


def spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(min(values))} .. {fmt.format(max(values))}"


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def report(direct: Target, gateway: Target, args: argparse.Namespace, load_before: float) -> None:
    """A Markdown table (pasteable into docs/benchmarks.md): medians over rounds of the
    per-round figures, and the spread (min .. max over rounds) of the added figure."""
    med = statistics.median
    print(
        f"\n{args.rounds} interleaved rounds x {args.requests} sequential requests "
        f"({args.stream_requests} streamed) per side; raw-socket HTTP/1.1 keep-alive client; "
        f"gateway access log {'on' if args.access_log else 'off'}"
    )
    print(row(["", "direct", "gateway", "added", "spread of added", "target"]))
    print(row(["---"] + ["---:"] * 4 + ["---"]))
    for label, metric, target in (
        ("latency p50 (ms)", "p50", TARGETS["p50"]),
        ("latency p99 (ms)", "p99", TARGETS["p99"]),
        ("stream first event p50 (ms)", "ttfc", None),
        ("stream first event p99 (ms)", "ttfc_p99", None),
        ("CPU per request (us)", "cpu_us", None),
    ):
        diffs = added(direct, gateway, metric)
        fmt = "{:.1f}" if metric == "cpu_us" else "{:.3f}"
        verdict = (
            ""
            if target is None
            else (f"<= {target} " + ("met" if med(diffs) <= target else "MISSED"))
        )
        print(
            row(
                [
                    label,
                    fmt.format(med(direct.samples[metric])),
                    fmt.format(med(gateway.samples[metric])),
                    "+" + fmt.format(med(diffs)),
                    spread(diffs, fmt),
                    verdict,
                ]
            )
        )
    if "rps" in direct.samples:
        ratios = [g / d for d, g in zip(direct.samples["rps"], gateway.samples["rps"], strict=True)]
        verdict = "met" if med(ratios) >= TARGETS["ratio"] else "MISSED"
        print(
            row(
                [
                    f"throughput c={args.concurrency} (req/s, {direct.load_tool}, "
                    f"{args.throughput_rounds} x {args.seconds:g} s)",
                    f"{med(direct.samples['rps']):.0f}",
                    f"{med(gateway.samples['rps']):.0f}",
                    f"{med(ratios):.3f}x",
                    spread(ratios, "{:.3f}x"),
                    f">= {TARGETS['ratio']}x {verdict}",
                ]
            )
        )
        failed = {t.name: sum(t.samples["load_errors"]) for t in (direct, gateway)}
        if any(failed.values()):
            print(f"\nfailed requests under load (non-2xx or socket errors): {failed}")
    print(
        f"\nCPU per request: the upstream's, and the gateway process's own (all threads), "
        f"during the sequential runs.\nmachine: {os.cpu_count()} CPUs, load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after; python "
        f"{sys.version.split()[0]}"
    )


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="sequential requests per target per round for latency",
    )
    parser.add_argument(
        "--stream-requests",
        type=int,
        default=500,
        help="sequential streamed requests per target per round for TTFC",
    )
    parser.add_argument("--warmup", type=int, default=200, help="unrecorded requests per round")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--seconds",
        type=float,
        default=4.0,
        help="throughput run length per target per round (0 skips throughput)",
    )
    parser.add_argument("--throughput-rounds", type=int, default=3)
    parser.add_argument("--load-tool", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--load-procs", type=int, default=2, help="processes for --load-tool python"
    )
    parser.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="turn the gateway's access log off (it is on by default)",
    )
    overhead_matrix.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vlmgw-bench-") as tmp:
        workdir = Path(tmp)
        fake, fake_port = start_fake(workdir)
        if args.matrix:
            try:
                overhead_matrix.run_matrix(args, workdir, fake, fake_port)
            finally:
                stop_process_group(fake)
            return
        gateway = GatewayProcess(gateway_config(fake_port, args.access_log), workdir)
        try:
            gateway.start()
            direct = Target("direct", fake_port, fake.pid)
            via = Target("gateway", gateway.port, gateway.proc.pid)
            print("latency and streaming rounds ...", file=sys.stderr)
            interleaved(direct, via, args.rounds, lambda t: latency_round(t, args))
            if args.seconds > 0:
                print(f"throughput rounds ({args.seconds:g} s each) ...", file=sys.stderr)
                interleaved(
                    direct,
                    via,
                    args.throughput_rounds,
                    lambda t: throughput_round(t, args, workdir),
                )
            report(direct, via, args, load_before)
        finally:
            gateway.stop()
            stop_process_group(fake)


if __name__ == "__main__":
    main()
