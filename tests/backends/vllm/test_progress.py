"""Progress lines while a managed vLLM starts: the gateway's log says every few seconds which
phase the process's own log shows, in order, and its last lines when the start fails.

tests/support/fake_vllm.py prints a real-looking vLLM start-up log, one step per go file, so
the test sees each phase for as long as it polls for it (no timing involved)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx

from tests.support.fake_vllm import STARTUP_STEPS
from tests.support.managed import wait_model
from tests.support.polling import wait_until
from tests.support.processes import REPO, GatewayProcess

PHASES_BEFORE_READY = [phase for phase, _ in STARTUP_STEPS[:-1]]


def _gateway(tmp_path: Path, steps: Path, **env: str) -> GatewayProcess:
    steps.mkdir(exist_ok=True)
    entry = {
        "name": "m",
        "backend": "vllm",
        "model": "org/m",
        "command": [sys.executable, "-m", "tests.support.fake_vllm"],
        "env": {"PYTHONPATH": str(REPO), "FAKE_VLLM_STARTUP_STEPS": str(steps), **env},
        "progress_interval": 0.05,
    }
    config = {"data_dir": str(tmp_path / "data"), "models": [entry]}
    return GatewayProcess(config, tmp_path).start(wait_ready=False)


def _model_ready(gateway: GatewayProcess) -> httpx.Response:
    return httpx.get(gateway.url + "/ready?model=m", timeout=10)


def _progress_phases(log: str) -> list[str]:
    """The phases the progress lines named, in order, each once."""
    found = re.findall(
        r"model m replica 0: vLLM \(pid \d+\) starting for .*?; phase: ([a-z ]+)", log
    )
    return list(dict.fromkeys(phase.strip() for phase in found))


def test_progress_lines_name_each_phase_in_order_then_it_serves(tmp_path):
    steps = tmp_path / "steps"
    with _gateway(tmp_path, steps) as gateway:
        for step, phase in enumerate(PHASES_BEFORE_READY):
            if step:
                (steps / str(step)).touch()  # let the fake print the next stretch of its log
            wait_until(lambda p=phase: p in _progress_phases(gateway.log()), f"a {phase} line")
            response = _model_ready(gateway)  # /ready says the same phase, and not ready
            assert response.status_code == 503
            assert response.json()["models"]["m"]["replicas"][0]["phase"] == phase
        (steps / str(len(STARTUP_STEPS) - 1)).touch()
        wait_until(lambda: _model_ready(gateway).status_code == 200, "m ready")
        assert _model_ready(gateway).json()["models"]["m"]["replicas"][0]["phase"] == "ready"
        log = gateway.log()
    assert _progress_phases(log) in (PHASES_BEFORE_READY, PHASES_BEFORE_READY + ["ready"])
    # Each line says what it read: vLLM's own words, without its prefix.
    assert "phase: loading weights (Loading safetensors checkpoint shards:  50%" in log
    summary = log.index("vlm-gateway listening on")
    assert "  model m: backend vllm, 1 replica: starting" in log[summary:]


def test_a_failed_start_logs_its_phase_and_the_last_lines_of_its_log(tmp_path):
    steps = tmp_path / "steps"
    steps.mkdir()
    for step in range(1, len(STARTUP_STEPS)):
        (steps / str(step)).touch()
    with _gateway(tmp_path, steps, FAKE_VLLM_STARTUP_FAIL="1") as gateway:
        report = wait_model(gateway, "m", state="failed", deadline_s=60)
        log = gateway.log()
    assert report["phase"] == "compiling"
    ended = re.search(
        r"model m replica 0: vLLM \(pid \d+\) start ended after \d+ s in phase (.*)", log
    )
    assert ended and ended.group(1).startswith("compiling (Capturing CUDA graphs")
    failed = log.index("model m failed: vLLM exited with code 1 before it was ready")
    tail = log[failed:]
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" in tail
    assert "RuntimeError: Engine core initialization failed" in tail
