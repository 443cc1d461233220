"""Soak benchmark (not CI): minutes of mixed load through the real gateway process in front of
three fake replicas of one model that fail in different ways, sampling the gateway's RSS, open
file descriptors, threads and asyncio tasks every few seconds. Growth is what it reports: a
leak shows as a count that keeps climbing after the first minute.

    .venv/bin/python -m tests.bench.soak                 # 10 minutes
    .venv/bin/python -m tests.bench.soak --minutes 1     # a quick look

Replicas (tests/support/fault_upstream.py, each its own process): `flaky` answers 8% of
requests 503 and resets 4% of connections before answering; `slow` waits 0.5 s before each
answer and streams slowly; `steady` is healthy. Load, about --rate requests/s from
--concurrency clients: text and image chats (JSON and streams; a fifth of the streams are left
by their client after the second event), and a batch of --batch-lines lines every
--batch-every seconds. With VLMGW_TEST_CENSUS=FILE, the gateway also appends a census of its
live objects by type and its allocators' totals to FILE once a minute, to tell a leak from
allocator high-water (tests/support/counted_gateway.py). Figures: docs/reliability.md, "Soak".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.support.counted_gateway import CountedGateway
from tests.support.images import image_message, png_data_url
from tests.support.processes import REPO, stop_process_group

REPLICAS = {
    "flaky": ["--p503", "0.08", "--preset", "0.04"],
    "slow": ["--delay", "0.5", "--pause", "0.1"],
    "steady": [],
}
KINDS = {  # kind -> weight
    "text": 30,
    "image": 20,
    "text-stream": 30,
    "image-stream": 20,
}
FINAL = {"completed", "failed", "expired", "cancelled"}


def start_replicas() -> tuple[list[subprocess.Popen[str]], dict[str, str]]:
    procs, urls = [], {}
    for seed, (name, faults) in enumerate(REPLICAS.items()):
        argv = [sys.executable, "-m", "tests.support.fault_upstream", "--name", name]
        proc = subprocess.Popen(
            [*argv, "--seed", str(seed), *faults],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        assert proc.stdout is not None
        procs.append(proc)
        urls[name] = proc.stdout.readline().strip()
    return procs, urls


def body(kind: str, rng: random.Random) -> dict:
    if kind.startswith("image"):
        messages = [image_message("Describe.", png_data_url(seed=rng.randrange(8)))]
    else:
        messages = [{"role": "user", "content": f"hello {rng.randrange(1000)}"}]
    return {"model": "m", "messages": messages, "max_tokens": 8, "stream": "stream" in kind}


class Load:
    def __init__(self, url: str, args: argparse.Namespace) -> None:
        self.url, self.args = url, args
        self.statuses: Counter[str] = Counter()
        self.batches: Counter[str] = Counter()
        self.reliability: list[str] = []  # the gateway's failover and ejection counters
        self.stop_at = time.monotonic() + args.minutes * 60

    async def client(self, client: httpx.AsyncClient, seed: int) -> None:
        rng = random.Random(seed)
        interval = self.args.concurrency / self.args.rate
        while time.monotonic() < self.stop_at:
            started = time.monotonic()
            kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
            leave = "stream" in kind and rng.random() < 0.2
            try:
                outcome = await self.one(client, kind, body(kind, rng), leave)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            self.statuses[f"{kind}: {outcome}"] += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    @staticmethod
    async def one(client: httpx.AsyncClient, kind: str, payload: dict, leave: bool) -> str:
        if not payload["stream"]:
            response = await client.post("/v1/chat/completions", json=payload)
            return f"{response.status_code}{_retried(response)}"
        async with client.stream("POST", "/v1/chat/completions", json=payload) as response:
            events = 0
            retried = _retried(response)
            async for line in response.aiter_lines():
                events += line.startswith("data:")
                if leave and events == 2:
                    return f"{response.status_code}{retried} left"
                if line == "data: [DONE]":
                    return f"{response.status_code}{retried} done"
                if line.startswith('data: {"error"'):
                    return f"{response.status_code}{retried} error event"
            return f"{response.status_code}{retried} ended"

    async def batches_loop(self, client: httpx.AsyncClient) -> None:
        rng = random.Random(99)
        while time.monotonic() + self.args.batch_every < self.stop_at:
            await asyncio.sleep(self.args.batch_every)
            lines = [
                {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body("image" if i % 2 else "text", rng),
                }
                for i in range(self.args.batch_lines)
            ]
            data = "\n".join(json.dumps(line) for line in lines).encode()
            files = {"file": ("in.jsonl", data, "application/jsonl")}
            upload = await client.post("/v1/files", data={"purpose": "batch"}, files=files)
            batch = await client.post(
                "/v1/batches",
                json={
                    "input_file_id": upload.json()["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
            )
            status = batch.json()
            while status.get("status") not in FINAL and time.monotonic() < self.stop_at + 60:
                await asyncio.sleep(1)
                status = (await client.get(f"/v1/batches/{status['id']}")).json()
            counts = status.get("request_counts", {})
            self.batches[status.get("status", "?")] += 1
            self.batches["lines completed"] += counts.get("completed", 0)
            self.batches["lines failed"] += counts.get("failed", 0)


def _retried(response: httpx.Response) -> str:
    return " failed over" if response.headers.get("x-vlmgw-attempts") == "2" else ""


async def sample(gateway: CountedGateway, every_s: float, stop_at: float, rows: list) -> None:
    start = time.monotonic()
    while True:
        rows.append(
            {
                "t": round(time.monotonic() - start),
                "rss_mib": round(gateway.rss_bytes() / 2**20, 1),
                "fds": gateway.fds(),
                "threads": gateway.threads(),
                "tasks": gateway.tasks(),
            }
        )
        if time.monotonic() >= stop_at:
            return
        await asyncio.sleep(min(every_s, max(0.0, stop_at - time.monotonic())))


async def drive(gateway: CountedGateway, args: argparse.Namespace) -> tuple[Load, list]:
    load, rows = Load(gateway.url, args), []
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits) as client:
        work = [load.client(client, seed) for seed in range(args.concurrency)]
        work.append(load.batches_loop(client))
        sampler = sample(gateway, args.sample_s, load.stop_at, rows)
        await asyncio.gather(*work, sampler)
        await asyncio.sleep(args.settle_s)  # open connections close, pools expire
        await sample(gateway, 0, 0, rows)  # one more row: after the load
        metrics = (await client.get("/metrics")).text
    load.reliability = [
        line
        for line in metrics.splitlines()
        if line.startswith(("vlmgw_failovers_total", "vlmgw_replica_ejections_total"))
    ]
    return load, rows


def report(load: Load, rows: list, args: argparse.Namespace) -> None:
    print(f"\n{args.minutes:g} min, target {args.rate:g} req/s from {args.concurrency} clients")
    print(f"{sum(load.statuses.values())} requests:")
    for outcome, count in sorted(load.statuses.items()):
        print(f"  {outcome:32} {count}")
    print(f"batches: {dict(load.batches)}")
    print("\n".join(["gateway /metrics:", *(f"  {line}" for line in load.reliability)]))
    warm = next((r for r in rows if r["t"] >= 60), rows[0])
    under_load = rows[:-1]
    print("\nmetric     start   after 1 min   end (load)   max    after load   growth from 1 min")
    for key in ("rss_mib", "fds", "threads", "tasks"):
        values = [r[key] for r in under_load]
        line = f"{key:9} {rows[0][key]:6}   {warm[key]:10}   {values[-1]:10}   {max(values):6}"
        print(f"{line}   {rows[-1][key]:10}   {values[-1] - warm[key]:+.6g}")
    if args.rows:
        Path(args.rows).write_text(json.dumps(rows, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second, about")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--batch-every", type=float, default=60.0)
    parser.add_argument("--batch-lines", type=int, default=20)
    parser.add_argument("--rows", help="write every sample to this JSON file")
    args = parser.parse_args(argv)
    procs, urls = start_replicas()
    workdir = Path(tempfile.mkdtemp(prefix="vlmgw-soak-"))
    quick = {"timeout": 10, "connect_timeout": 2, "eject_after": 3}
    models = [{"name": "m", "backend": "openai", "base_url": url, **quick} for url in urls.values()]
    config = {"data_dir": str(workdir / "data"), "access_log": False, "models": models}
    try:
        with CountedGateway(config, workdir).start() as gateway:
            load, rows = asyncio.run(drive(gateway, args))
            report(load, rows, args)
            print(f"\ngateway log: {gateway.log_path}")
    finally:
        for proc in procs:
            stop_process_group(proc, grace_s=5)


if __name__ == "__main__":
    main()
