"""`bench_swap --gateway`: what the gateway adds to an on-demand swap beyond the backend's
own stop and start (issue 26's target: at most 50 ms).

`vlm-gateway serve` runs two managed vLLMs (the tiny BLIP-2 and LLaVA) with `load: on_demand`
under `max_loaded_models: 1`, so a chat for the model that is not loaded swaps: the loaded
one's process group is stopped, the other's launched. The rounds alternate the two models;
per swap it measures

- the client's time: a 1-token chat for the unloaded model through the official openai SDK;
- the backend's own parts, independently of the gateway: the old group's stop (from its
  SIGTERM, written down by a sidecar in the group, stop_stamp.py, to its last process gone),
  the new vLLM's start (from its process appearing to its HTTP server serving the model,
  swap_watch.py), and a 1-token chat sent to the new vLLM directly (the same SDK) after;

and prints the gateway's added time (client − stop − start − direct chat) with its three gaps:
request → stop signal, old group gone → new process, served → answered less the direct chat.
The direct chat is the new process's second; the gateway's is its first, so any first-chat
cost of vLLM's counts against the gateway.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai

from tests.bench.swap_watch import SwapWatch, stop_signal_time, vllm_leader, wait_armed
from tests.support.managed import stop_gateway, vllm_entry
from tests.support.processes import VLLM_SMALL_ARGS, GatewayProcess

MODELS = ("blip2", "llava")
TARGET_MS = 50.0
STAMP_SCRIPT = Path(__file__).with_name("stop_stamp.py")


@dataclass(frozen=True)
class SwapTimes:
    client: float
    stop: float
    start: float
    direct_chat: float
    to_signal: float  # request sent -> old group's SIGTERM
    to_spawn: float  # old group gone -> new process
    to_answer: float  # new vLLM serving -> client's answer, less the direct chat
    proxy: float  # a chat through the gateway once loaded, less the direct chat

    @property
    def added(self) -> float:
        return self.client - self.stop - self.start - self.direct_chat

    def line(self) -> str:
        return (
            f"client {ms(self.client)} = stop {ms(self.stop)} + start {ms(self.start)} + "
            f"direct chat {ms(self.direct_chat)} + gateway {ms(self.added)} "
            f"(request→signal {ms(self.to_signal)}, gone→spawn {ms(self.to_spawn)}, "
            f"served→answer less chat {ms(self.to_answer)}); loaded, the gateway adds "
            f"{ms(self.proxy)} to a chat"
        )


def gateway_config(args: argparse.Namespace, work: Path, stamps: Path) -> dict:
    """Both models on demand under a budget of one; each vLLM launched with the sidecar."""
    from vlm_gateway.cli.tiny_models import build_tiny_blip2, build_tiny_llava

    models = {
        "blip2": build_tiny_blip2(work / "tiny-blip2"),
        "llava": build_tiny_llava(work / "tiny-llava"),
    }
    sidecar = (
        f"{shlex.quote(sys.executable)} {shlex.quote(str(STAMP_SCRIPT))} {shlex.quote(str(stamps))}"
    )
    command = ["sh", "-c", f'{sidecar} & exec "$0" "$@"', *shlex.split(args.vllm)]
    entries = [
        vllm_entry(
            name,
            models[name],
            [*VLLM_SMALL_ARGS, *args.arg],
            load="on_demand",
            load_timeout=600,
            command=command,
        )
        for name in MODELS
    ]
    return {"data_dir": str(work / "gateway"), "max_loaded_models": 1, "models": entries}


def chat(client: openai.OpenAI, model: str) -> None:
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )


def one_swap(gateway: GatewayProcess, client: openai.OpenAI, new: str, stamps: Path) -> SwapTimes:
    assert gateway.proc is not None
    old = next(name for name in MODELS if name != new)
    old_group = vllm_leader(gateway.proc.pid, old)
    if old_group is None:
        raise RuntimeError(f"{old} is not loaded: nothing to swap out")
    wait_armed(stamps, old_group)
    watch = SwapWatch(gateway.proc.pid, old_group, new)
    with ThreadPoolExecutor(1) as pool:
        watching = pool.submit(watch.run)
        requested = time.monotonic()
        chat(client, new)
        answered = time.monotonic()
        backend = watching.result()
    direct = openai.OpenAI(
        base_url=f"http://127.0.0.1:{backend.port}/v1", api_key="x", max_retries=0
    )
    direct_started = time.monotonic()
    chat(direct, new)
    direct_chat = time.monotonic() - direct_started
    proxied_started = time.monotonic()
    chat(client, new)
    proxied_chat = time.monotonic() - proxied_started
    signalled = stop_signal_time(stamps, old_group)
    if signalled is None:
        # SIGKILL came before the sidecar wrote (a server that exits at once on SIGTERM, as
        # tests/support/fake_vllm.py does): the signal came before the first exit.
        print(f"  (no stop stamp for group {old_group}: its first exit taken as the signal)")
        signalled = backend.first_exit
    return SwapTimes(
        client=answered - requested,
        stop=backend.gone - signalled,
        start=backend.served - backend.spawned,
        direct_chat=direct_chat,
        to_signal=signalled - requested,
        to_spawn=backend.spawned - backend.gone,
        to_answer=answered - backend.served - direct_chat,
        proxy=proxied_chat - direct_chat,
    )


def measure_gateway(args: argparse.Namespace, work: Path) -> None:
    stamps = work / "stop-stamps"
    gateway = GatewayProcess(gateway_config(args, work, stamps), work).start()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=600)
    taken: list[SwapTimes] = []
    try:
        started = time.monotonic()
        chat(client, MODELS[0])  # the first load: no swap yet
        print(f"first load of {MODELS[0]} through the gateway: {ms(time.monotonic() - started)}")
        warm = one_swap(gateway, client, MODELS[1], stamps)
        print(f"warm-up swap → {MODELS[1]} (not counted): {warm.line()}")
        for index in range(args.rounds):
            for new in (MODELS[0], MODELS[1]):
                taken.append(one_swap(gateway, client, new, stamps))
                print(f"round {index + 1} → {new}: {taken[-1].line()}", flush=True)
    finally:
        stop_gateway(gateway)
    report(taken)


def report(taken: list[SwapTimes]) -> None:
    def spread(values: list[float]) -> str:
        return f"median {ms(statistics.median(values))} ({ms(min(values))} to {ms(max(values))})"

    print(f"{len(taken)} swaps:")
    parts = (
        "client",
        "stop",
        "start",
        "direct_chat",
        "to_signal",
        "to_spawn",
        "to_answer",
        "proxy",
    )
    for part in parts:
        print(f"  {part:<12} {spread([getattr(swap, part) for swap in taken])}")
    added = [swap.added * 1000 for swap in taken]
    within = sum(value <= TARGET_MS for value in added)
    print(
        f"  gateway added {spread([swap.added for swap in taken])}: within the {TARGET_MS:g} ms "
        f"target in {within} of {len(added)} swaps"
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"
