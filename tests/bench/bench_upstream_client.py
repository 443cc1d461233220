"""CPU per upstream request: aiohttp against the gateway's own HTTP/1.1 client (a script).

    .venv/bin/python -m tests.bench.bench_upstream_client [--rounds 3]

One process, uvloop, the fixed-response fake upstream (tests/support/fake_upstream.py) on
loopback; each client posts the overhead matrix's bodies (1-token text chat, 337 KB PNG data
URL) sequentially over one kept-alive connection, the two clients alternating round by round.
Prints the process's CPU time per request (user + system, so the socket writes count).
docs/benchmarks-history.md, "The upstream client replaced".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import uvloop

from tests.bench.overhead_matrix import bodies
from tests.support.processes import REPO, free_port, wait_http
from vlm_gateway.backends.openai_upstream.http1 import Http1Pool

HEADERS = {"content-type": "application/json", "accept-encoding": "identity"}
WARM_UP = 200


async def cpu_per_request(client: str, url: str, body: bytes, count: int) -> float:
    post, close = _client(client, url, body)
    for _ in range(WARM_UP):
        await post()
    started = time.process_time()
    for _ in range(count):
        await post()
    spent = time.process_time() - started
    await close()
    return spent / count * 1e6


def _client(
    name: str, url: str, body: bytes
) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    if name == "aiohttp":
        session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600)

        async def post_aiohttp() -> None:
            response = await session.post(
                url + "/chat/completions", data=body, headers=HEADERS, timeout=timeout
            )
            await response.read()
            response.release()

        return post_aiohttp, session.close
    pool = Http1Pool(url, limit=100)

    async def post_http1() -> None:
        response = await pool.post(
            "/chat/completions", HEADERS, body, connect_timeout=5, read_timeout=600
        )
        await response.read()
        response.release()

    async def close() -> None:
        pool.close()

    return post_http1, close


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_upstream", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", 30, fake)
        url = f"http://127.0.0.1:{port}/v1"
        for name, payload in bodies().items():
            body = orjson.dumps({**payload, "model": "ok"})
            count = 3000 if len(body) < 10_000 else 600
            for round_number in range(args.rounds):
                order = ("aiohttp", "http1") if round_number % 2 == 0 else ("http1", "aiohttp")
                for client in order:
                    cpu = uvloop.run(cpu_per_request(client, url, body, count))
                    print(f"{name:6s} {len(body):7d} B  {client:8s} {cpu:7.1f} µs CPU/request")
    finally:
        fake.kill()
        fake.wait()


if __name__ == "__main__":
    main()
