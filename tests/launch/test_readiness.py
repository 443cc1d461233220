"""Readiness by HTTP: /health, then /v1/models listing the name; a process exit ends the wait."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import pytest

from tests.support.polling import until
from tests.support.processes import REPO, free_port
from vlm_gateway.launch.process import ManagedProcess
from vlm_gateway.launch.readiness import ProcessExited, StartTimeout, wait_until_serving

FAKE_VLLM = [sys.executable, "-m", "tests.support.fake_vllm"]


async def _wait(argv, tmp_path, deadline_s=20.0, served="m", env=None):
    port = free_port()
    process = await ManagedProcess.spawn(
        [*argv, "serve", "tiny", "--served-model-name", "m", "--port", str(port)],
        {"PYTHONPATH": str(REPO), **(env or {})},
        tmp_path / "p.log",
    )
    try:
        async with aiohttp.ClientSession() as client:
            return await wait_until_serving(
                client, f"http://127.0.0.1:{port}", served, process, deadline_s
            )
    finally:
        await process.stop(2)


def test_returns_the_served_models_card(tmp_path):
    card = asyncio.run(_wait(FAKE_VLLM, tmp_path))
    assert card["id"] == "m" and card["max_model_len"] == 512


def test_a_process_that_exits_ends_the_wait_at_once(tmp_path):
    # The wait's own deadline is out of reach: only the exit can end it (the test's timeout
    # only turns a wait that missed the exit into a failure instead of a hang).
    wait = _wait([sys.executable, "-c", "raise SystemExit(4)"], tmp_path, deadline_s=3600)
    with pytest.raises(ProcessExited) as caught:
        asyncio.run(asyncio.wait_for(wait, 60))
    assert caught.value.returncode == 4


def test_a_server_that_never_lists_the_name_times_out(tmp_path):
    with pytest.raises(StartTimeout, match="within the startup deadline of 1 s"):
        asyncio.run(_wait(FAKE_VLLM, tmp_path, deadline_s=1, served="other"))


def test_a_server_that_refuses_connections_while_it_starts_is_seen_once_it_listens(tmp_path):
    # The fake, like vLLM 0.32, accepts connections only once it serves: here after the last
    # of its start-up steps, each held at a gate this test opens.
    from tests.support.fake_vllm import STARTUP_STEPS

    steps = tmp_path / "steps"
    steps.mkdir()
    log = tmp_path / "p.log"

    async def scenario():
        env = {"FAKE_VLLM_STARTUP_STEPS": str(steps)}
        wait = asyncio.ensure_future(_wait(FAKE_VLLM, tmp_path, deadline_s=3600, env=env))
        await until(lambda: log.exists() and "fake vllm serving" in log.read_text(), "started")
        for step in range(1, len(STARTUP_STEPS)):
            assert not wait.done()  # refused until the last step: nothing to find yet
            (steps / str(step)).touch()
        return await asyncio.wait_for(wait, 60)

    card = asyncio.run(scenario())
    assert card["id"] == "m"
