"""Load generators for the overhead benchmark, identical for direct and via-gateway runs.

`RawClient` speaks HTTP/1.1 over one keep-alive socket with prebuilt request bytes: it costs a
few microseconds per request, far less than httpx, so latency differences are the servers'.
Throughput at a fixed concurrency comes from `wrk` (C, cheap) when installed, else from a few
processes of asyncio raw-socket clients.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import orjson


def build_request(host: str, port: int, path: str, body: dict) -> bytes:
    payload = orjson.dumps(body)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


class RawClient:
    """One keep-alive connection; `exchange` sends a request and reads the whole response."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.first_event_ns = 0

    def close(self) -> None:
        self.sock.close()

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk
        if not self.first_event_ns and b"data:" in self.buf:
            self.first_event_ns = time.perf_counter_ns()

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._recv()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _take_line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            self._recv()
        return self._take(end + 2)[:-2]

    def exchange(self, request: bytes) -> tuple[int, int]:
        """(ns to the first `data:` event or, without one, to the whole body; ns to the end)."""
        self.first_event_ns = 0
        start = time.perf_counter_ns()
        self.sock.sendall(request)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._recv()
        head = self._take(end + 4).lower()
        if not head.startswith((b"http/1.1 200", b"http/1.0 200")):
            raise RuntimeError(f"unexpected response: {head[:200]!r}")
        match = re.search(rb"\r\ncontent-length: *(\d+)", head)
        if match:
            self._take(int(match.group(1)))
        else:  # chunked: the event stream
            while size := int(self._take_line().split(b";")[0], 16):
                self._take(size + 2)
            self._take_line()
        done = time.perf_counter_ns()
        return (self.first_event_ns or done) - start, done - start


# -- throughput ---------------------------------------------------------------------------------


@dataclass
class LoadResult:
    rps: float
    errors: int
    tool: str
    requests: int = 0  # completed in the run (wrk only)
    p50_ms: float | None = None  # wrk's latency distribution (wrk only)
    p99_ms: float | None = None


_WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {body}
"""


def run_load(
    host: str,
    port: int,
    path: str,
    body: dict,
    concurrency: int,
    seconds: float,
    workdir: Path,
    tool: str = "auto",
    procs: int = 2,
) -> LoadResult:
    """Requests per second at `concurrency` open connections, each sending back to back."""
    wrk = shutil.which("wrk")
    if tool == "wrk" and not wrk:
        raise RuntimeError("wrk not found: apt-get install wrk, or pass --load-tool python")
    if wrk and tool in ("auto", "wrk"):
        return _run_wrk(wrk, host, port, path, body, concurrency, seconds, workdir)
    return _run_python(host, port, path, body, concurrency, seconds, procs)


def _run_wrk(
    wrk: str,
    host: str,
    port: int,
    path: str,
    body: dict,
    concurrency: int,
    seconds: float,
    workdir: Path,
) -> LoadResult:
    script = workdir / "post.lua"
    # A JSON string literal is a valid Lua string literal for this ASCII body.
    script.write_text(_WRK_SCRIPT.format(body=orjson.dumps(orjson.dumps(body).decode()).decode()))
    # wrk's default 2 s timeout counts slow answers from an overloaded machine as errors.
    argv = [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
        f"http://{host}:{port}{path}",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s*(\d+)", out))
    socket_errors = re.search(r"Socket errors:(.*)", out)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    done = re.search(r"(\d+) requests in", out)
    return LoadResult(
        rps,
        errors,
        "wrk -t1",
        int(done.group(1)) if done else 0,
        _wrk_percentile(out, "50"),
        _wrk_percentile(out, "99"),
    )


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_percentile(out: str, percent: str) -> float | None:
    """`     99%    1.23ms` in wrk's --latency distribution, in ms."""
    match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
    return float(match.group(1)) * _UNIT_MS[match.group(2)] if match else None


def _run_python(
    host: str, port: int, path: str, body: dict, concurrency: int, seconds: float, procs: int
) -> LoadResult:
    request = build_request(host, port, path, body)
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    ctx = multiprocessing.get_context("spawn")  # no inherited sockets or loops
    with ctx.Pool(procs) as pool:
        results = pool.starmap(_load_worker, [(host, port, request, n, seconds) for n in shares])
    done = sum(ok for ok, _ in results)
    return LoadResult(done / seconds, sum(err for _, err in results), f"python x{procs}")


def _load_worker(
    host: str, port: int, request: bytes, conns: int, seconds: float
) -> tuple[int, int]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_load_async(host, port, request, conns, seconds))


async def _load_async(
    host: str, port: int, request: bytes, conns: int, seconds: float
) -> tuple[int, int]:
    counts = [0, 0]
    start = time.monotonic()
    deadline = start + seconds

    async def one_connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                counts[0 if head.startswith(b"HTTP/1.1 200") else 1] += 1
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(conns)))
    return counts[0], counts[1]
