"""Splitting a shared GPU's memory, and starting the processes that share it in turn."""

from __future__ import annotations

import asyncio

import pytest

from vlm_gateway.launch.gpu_sharing import GpuClaim, StartSequencer, split_gpu_memory


def test_declared_shares_are_kept_and_undeclared_split_the_rest():
    shares = split_gpu_memory(
        [
            GpuClaim(("blip2", 0), (0,), 0.4),
            GpuClaim(("llava", 0), (0,), None),
            GpuClaim(("llava", 1), (0,), None),
        ]
    )
    assert shares == {("blip2", 0): 0.4, ("llava", 0): 0.275, ("llava", 1): 0.275}


def test_a_process_alone_on_its_gpu_or_unpinned_keeps_vllms_default():
    shares = split_gpu_memory(
        [GpuClaim("a", (0,), None), GpuClaim("b", (1,), 0.8), GpuClaim("c", None, None)]
    )
    assert shares == {"a": None, "b": 0.8, "c": None}


def test_over_committed_gpu_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"GPU 1: .* sums to 1.10 .*blip2\[0\]=0.6"):
        split_gpu_memory([GpuClaim(("blip2", 0), (1,), 0.6), GpuClaim(("llava", 0), (0, 1), 0.5)])


def test_nothing_left_for_an_undeclared_process_is_refused():
    with pytest.raises(ValueError, match="nothing is left for llava"):
        split_gpu_memory([GpuClaim(("blip2", 0), (0,), 0.93), GpuClaim(("llava", 0), (0,), None)])


def test_processes_sharing_a_gpu_start_one_after_another_in_order():
    async def scenario():
        sequencer, events = StartSequencer(), []

        async def start(name, gpus):
            async with sequencer.turn(gpus):
                events.append(f"{name} launch")
                await asyncio.sleep(0.05)
                events.append(f"{name} ready")

        await asyncio.gather(start("a", (0,)), start("b", (0,)), start("c", (1,)))
        return events

    events = asyncio.run(scenario())
    assert events.index("a ready") < events.index("b launch")
    assert events.index("c launch") < events.index("a ready")  # another GPU: no waiting
