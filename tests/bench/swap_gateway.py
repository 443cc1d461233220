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

The direct chat is the new process's second; the gateway's is its first. So that vLLM's own
first-chat cost is not taken for the gateway's, each round also starts the BLIP-2 once without
the gateway (the launch layer, as `bench_swap` without --gateway) and times its first and
second chat: the report gives the added time both as measured and less the median difference.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import openai

from tests.bench.bench_swap import NAME, LaunchedVllm, launch_command
from tests.bench.swap_watch import SwapWatch, stop_signal_time, vllm_leader, wait_armed
from tests.support.managed import stop_gateway, vllm_entry
from tests.support.processes import REPO, VLLM_SMALL_ARGS, GatewayProcess

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

    @property
    def added(self) -> float:
        return self.client - self.stop - self.start - self.direct_chat

    def line(self) -> str:
        return (
            f"client {ms(self.client)} = stop {ms(self.stop)} + start {ms(self.start)} + "
            f"direct chat {ms(self.direct_chat)} + gateway {ms(self.added)} "
            f"(request→signal {ms(self.to_signal)}, gone→spawn {ms(self.to_spawn)}, "
            f"served→answer less chat {ms(self.to_answer)})"
        )


def tiny_models(work: Path) -> dict[str, Path]:
    from vlm_gateway.cli.tiny_models import build_tiny_blip2, build_tiny_llava

    return {
        "blip2": build_tiny_blip2(work / "tiny-blip2"),
        "llava": build_tiny_llava(work / "tiny-llava"),
    }


def gateway_config(args: argparse.Namespace, models: dict[str, Path], data_dir: Path) -> dict:
    """Both models on demand under a budget of one; each vLLM launched with the sidecar."""
    stamps = data_dir.parent / "stop-stamps"
    sidecar = shlex.join([sys.executable, str(STAMP_SCRIPT), str(stamps)])
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
    return {"data_dir": str(data_dir), "max_loaded_models": 1, "models": entries}


def chat(client: openai.OpenAI, model: str) -> float:
    """Seconds a 1-token chat takes."""
    started = time.monotonic()
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    return time.monotonic() - started


def direct_client(port: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)


def one_swap(gateway: GatewayProcess, client: openai.OpenAI, new: str, work: Path) -> SwapTimes:
    assert gateway.proc is not None
    old = next(name for name in MODELS if name != new)
    old_group = vllm_leader(gateway.proc.pid, old)
    if old_group is None:
        raise RuntimeError(f"{old} is not loaded: nothing to swap out")
    stamps = work / "stop-stamps"
    wait_armed(stamps, old_group)
    watch = SwapWatch(gateway.proc.pid, old_group, new)
    with ThreadPoolExecutor(1) as pool:
        watching = pool.submit(watch.run)
        requested = time.monotonic()
        client_time = chat(client, new)
        backend = watching.result()
    direct_chat = chat(direct_client(backend.port), new)
    signalled = stop_signal_time(stamps, old_group)
    if signalled is None:
        # SIGKILL came before the sidecar wrote (a server that exits at once on SIGTERM, as
        # tests/support/fake_vllm.py does): the signal came before the first exit.
        print(f"  (no stop stamp for group {old_group}: its first exit taken as the signal)")
        signalled = backend.first_exit
    return SwapTimes(
        client=client_time,
        stop=backend.gone - signalled,
        start=backend.served - backend.spawned,
        direct_chat=direct_chat,
        to_signal=signalled - requested,
        to_spawn=backend.spawned - backend.gone,
        to_answer=requested + client_time - backend.served - direct_chat,
    )


def first_chats(args: argparse.Namespace, model: Path, work: Path) -> tuple[float, float]:
    """A fresh `vllm serve` of `model` without the gateway: its first and second chat."""

    async def started_and_chatted() -> tuple[float, float]:
        async with aiohttp.ClientSession() as session:
            command = launch_command(args, "stop", model)
            vllm = LaunchedVllm(command, session, work / "fresh-start.log")
            try:
                await vllm.start()
                client = direct_client(vllm.port)
                return chat(client, NAME), chat(client, NAME)  # the loop has nothing else to do
            finally:
                await vllm.stop()

    return asyncio.run(started_and_chatted())


def measure_gateway(args: argparse.Namespace, work: Path) -> None:
    """Each gateway (this tree's, and --compare-source's) swaps in turn in every round."""
    models = tiny_models(work)
    sources = {"this tree": REPO}
    if args.compare_source:
        sources[args.compare_source.name] = args.compare_source
    gateways = {
        label: GatewayProcess(
            gateway_config(args, models, work / f"gateway-{index}"), work, source=source
        )
        for index, (label, source) in enumerate(sources.items())
    }
    taken: dict[str, list[SwapTimes]] = {label: [] for label in gateways}
    penalties: list[float] = []
    try:
        clients = {
            label: warmed_up(label, gateway.start(), work) for label, gateway in gateways.items()
        }
        for index in range(args.rounds):
            for label, gateway in gateways.items():
                for new in MODELS:
                    taken[label].append(one_swap(gateway, clients[label], new, work))
                    print(
                        f"round {index + 1} {label} → {new}: {taken[label][-1].line()}", flush=True
                    )
            first, second = first_chats(args, models["blip2"], work)
            penalties.append(first - second)
            print(
                f"round {index + 1}, blip2 started without the gateway: first chat {ms(first)}, "
                f"second {ms(second)}",
                flush=True,
            )
    finally:
        for gateway in gateways.values():
            if gateway.proc is not None:
                stop_gateway(gateway)
    for label, swaps in taken.items():
        report(label, swaps, penalties)


def warmed_up(label: str, gateway: GatewayProcess, work: Path) -> openai.OpenAI:
    """The gateway's client, after its first load and a first swap (not counted)."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=600)
    print(f"{label}: first load of {MODELS[0]} through the gateway: {ms(chat(client, MODELS[0]))}")
    warm = one_swap(gateway, client, MODELS[1], work)  # leaves MODELS[1] loaded
    print(f"{label}: warm-up swap → {MODELS[1]}: {warm.line()}")
    return client


def report(label: str, taken: list[SwapTimes], penalties: list[float]) -> None:
    def spread(values: list[float]) -> str:
        return f"median {ms(statistics.median(values))} ({ms(min(values))} to {ms(max(values))})"

    print(f"{label}, {len(taken)} swaps:")
    for part in ("client", "stop", "start", "direct_chat", "to_signal", "to_spawn", "to_answer"):
        print(f"  {part:<12} {spread([getattr(swap, part) for swap in taken])}")
    penalty = statistics.median(penalties)
    print(f"  vLLM's first chat less its second, without the gateway: {spread(penalties)}")
    for less_what, less in (("as measured", 0.0), ("less vLLM's first-chat cost", penalty)):
        added = [swap.added - less for swap in taken]
        within = sum(value * 1000 <= TARGET_MS for value in added)
        print(
            f"  gateway added, {less_what}: {spread(added)}; within the {TARGET_MS:g} ms "
            f"target in {within} of {len(added)} swaps"
        )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"
