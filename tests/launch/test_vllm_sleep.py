"""`swap: sleep` for managed vLLM (issue 26): what the launch adds, and the sleep and wake calls
in order, against tests/support/fake_vllm.py launched from a config exactly as the gateway
launches vLLM (the fake serves the sleep routes only when it got both the flag and the
environment, as vLLM does). A real vLLM sleeps only on a GPU: tests/bench/bench_swap.py."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import REPO, free_port
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.backends.vllm.processes import planned_processes
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.errors import GatewayError
from vlm_gateway.launch.process import ManagedProcess
from vlm_gateway.launch.readiness import wait_until_serving
from vlm_gateway.launch.vllm_command import VllmCommand
from vlm_gateway.launch.vllm_sleep import SleepClient, sleep_mode_unavailable

FAKE_VLLM = [sys.executable, "-m", "tests.support.fake_vllm"]
SLEEP_ROUTES = ("/sleep", "/wake_up", "/is_sleeping")


def settings(swap: str, **keys) -> GatewaySettings:
    entry = {"name": "m", "backend": "vllm", "model": "tiny", "command": FAKE_VLLM, "swap": swap}
    return settings_model().model_validate({"models": [entry | keys]})


def command(swap: str, **keys) -> VllmCommand:
    gateway = settings(swap, **keys)
    [process] = planned_processes(gateway, gateway.models[0])
    return process.command


def test_swap_sleep_adds_the_flag_and_switches_the_dev_routes_on():
    sleepy = command("sleep")
    assert sleepy.argv(8000)[-1] == "--enable-sleep-mode"
    assert sleepy.env_additions()["VLLM_SERVER_DEV_MODE"] == "1"
    plain = command("stop")
    assert "--enable-sleep-mode" not in plain.argv(8000)
    assert "VLLM_SERVER_DEV_MODE" not in plain.env_additions()


def test_the_flag_in_extra_args_is_refused_in_favour_of_swap_sleep():
    with pytest.raises(ValueError) as refused:
        settings("stop", extra_args=["--enable-sleep-mode"])
    assert "extra_args: --enable-sleep-mode is set by the gateway; use swap: sleep" in str(
        refused.value
    )


def test_check_config_warns_when_no_gpu_is_visible_to_a_sleeping_vllm():
    gateway = settings("sleep", env={"CUDA_VISIBLE_DEVICES": ""})
    lines = gateway.models[0].plan_lines(0, gateway)
    assert any(line.startswith("  swap: sleep: an unload parks the weights") for line in lines)
    assert (
        "  warning: swap: sleep needs a CUDA or ROCm GPU, and CUDA_VISIBLE_DEVICES='' hides "
        "every GPU from it: vLLM refuses to start with sleep mode there (use swap: stop)"
    ) in lines
    stop = settings("stop")
    assert not any("swap" in line for line in stop.models[0].plan_lines(0, stop))


def test_sleep_mode_needs_a_gpu_device_node(tmp_path):
    node = tmp_path / "nvidiactl"
    assert "no CUDA or ROCm GPU" in (sleep_mode_unavailable({}, (str(node),)) or "")
    node.touch()
    assert sleep_mode_unavailable({"CUDA_VISIBLE_DEVICES": "0"}, (str(node),)) is None
    assert "hides every GPU" in (sleep_mode_unavailable({"CUDA_VISIBLE_DEVICES": "-1"}) or "")


async def launched(command: VllmCommand, tmp_path: Path, session: aiohttp.ClientSession):
    """The fake vLLM launched as the gateway launches vLLM; its root URL once it serves."""
    port = free_port()
    env = command.env_additions() | {"FAKE_VLLM_REQUEST_LOG": str(tmp_path / "requests.log")}
    env["PYTHONPATH"] = str(REPO)
    process = await ManagedProcess.spawn(command.argv(port), env, tmp_path / "vllm.log")
    root = f"http://127.0.0.1:{port}"
    await wait_until_serving(session, root, command.served_name, process, 60)
    return process, root


def sleep_calls(tmp_path: Path) -> list[str]:
    lines = (tmp_path / "requests.log").read_text().splitlines()
    return [line for line in lines if line.split()[1].split("?")[0] in SLEEP_ROUTES]


async def chat_status(session: aiohttp.ClientSession, root: str) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with session.post(root + "/v1/chat/completions", json=body) as response:
        return response.status


def test_sleep_then_wake_calls_vllms_routes_in_order(tmp_path):
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            process, root = await launched(command("sleep"), tmp_path, session)
            try:
                vllm = SleepClient(session, root, "m")
                assert await vllm.is_sleeping() is False
                await vllm.sleep()
                assert await chat_status(session, root) == 503  # asleep: no answers
                await vllm.wake_up()
                assert await chat_status(session, root) == 200
            finally:
                await process.stop(5)
        assert sleep_calls(tmp_path) == [
            "GET /is_sleeping",
            "POST /sleep?level=1",
            "GET /is_sleeping",  # confirmed: older vLLMs answered before they slept
            "POST /wake_up",
            "GET /is_sleeping",
        ]

    asyncio.run(scenario())


def test_a_vllm_without_sleep_mode_is_a_gateway_error_that_says_so(tmp_path):
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            process, root = await launched(command("stop"), tmp_path, session)
            try:
                with pytest.raises(GatewayError) as refused:
                    await SleepClient(session, root, "m").sleep()
            finally:
                await process.stop(5)
        assert refused.value.status_code == 502
        assert refused.value.message == (
            "vLLM for model 'm' did not go to sleep: /sleep is not served (404); it runs "
            "without --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1."
        )

    asyncio.run(scenario())


def test_a_vllm_that_is_gone_is_a_gateway_error():
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            vllm = SleepClient(session, f"http://127.0.0.1:{free_port()}", "m")
            with pytest.raises(GatewayError) as refused:
                await vllm.wake_up()
        assert refused.value.status_code == 502
        assert refused.value.message.startswith("vLLM for model 'm' did not wake up: ")

    asyncio.run(scenario())


def test_the_sleep_routes_are_called_on_loopback_only():
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(ValueError, match="loopback only"):
                SleepClient(session, "http://10.0.0.5:8000", "m")
            SleepClient(session, "http://[::1]:8000", "m")
            SleepClient(session, "http://localhost:8000", "m")

    asyncio.run(scenario())
