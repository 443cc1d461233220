"""`serve --workers 2` with models loaded on demand: the supervisor owns loading and the
workers' requests wait on it. Two managed "vllm" (tests/support/fake_vllm.py) under
`max_loaded_models: 1`; the first one's start is held at a gate the test opens."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.managed import process_group_members
from tests.support.polling import wait_until
from tests.support.processes import REPO
from tests.support.workers_gateway import WorkersGateway

FAKE_VLLM = [sys.executable, "-m", "tests.support.fake_vllm"]
ADMIN = "sk-admin"
STEPS = 4  # tests/support/fake_vllm.py's STARTUP_STEPS after the first


def _fake_vllm(name: str, **env: str) -> dict:
    return {
        "name": name,
        "backend": "vllm",
        "model": "tiny",
        "command": FAKE_VLLM,
        "env": {"PYTHONPATH": str(REPO), **env},
        "startup_timeout": 60,
        "liveness_interval": 3600,
        "load": "on_demand",
    }


@pytest.fixture
def swapping(tmp_path):
    steps = tmp_path / "steps"
    steps.mkdir()
    config = {
        "max_loaded_models": 1,
        "security": {"keys": [{"name": "admin", "key": ADMIN, "admin": True}]},
        "models": [_fake_vllm("v1", FAKE_VLLM_STARTUP_STEPS=str(steps)), _fake_vllm("v2")],
    }
    gateway = WorkersGateway(config, tmp_path)  # /ready answers while both are unloaded
    yield gateway, steps
    gateway.stop()


def _card(gateway: WorkersGateway, model: str) -> dict:
    answer = httpx.get(f"{gateway.url}/v1/models/{model}", headers=_auth(), timeout=10)
    return answer.json()["vlm_gateway"]


def _auth(key: str = ADMIN) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _chat(gateway: WorkersGateway, model: str) -> str:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN, max_retries=0)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    return reply.choices[0].message.content or ""


def _open_gates(steps: Path) -> None:
    for step in range(1, STEPS + 1):
        (steps / str(step)).touch()


def test_workers_requests_wait_on_the_supervisors_load_and_swap(swapping):
    gateway, steps = swapping
    with ThreadPoolExecutor(4) as pool:
        first = [pool.submit(_chat, gateway, "v1") for _ in range(4)]  # through both workers
        wait_until(lambda: _card(gateway, "v1")["loading"]["state"] == "loading", "v1 loading")
        wait_until(lambda: _card(gateway, "v1")["loading"]["waiting"] == 4, "4 waiting for v1")
        _open_gates(steps)
        assert [reply.result() for reply in first] == ["a"] * 4
    v1 = _card(gateway, "v1")
    assert v1["loading"]["state"] == "loaded"
    (v1_pid,) = [replica["pid"] for replica in v1["replicas"]]  # the supervisor's own card
    assert _chat(gateway, "v2") == "a"  # v1 unloaded to make room
    assert _card(gateway, "v1")["loading"]["state"] == "unloaded"
    assert process_group_members(v1_pid) == []
    unloaded = httpx.post(f"{gateway.url}/v1/models/v2/unload", headers=_auth(), timeout=30)
    assert unloaded.status_code == 200
    assert unloaded.json()["vlm_gateway"]["loading"]["state"] == "unloaded"
    assert gateway.children("tests.support.fake_vllm") == []
    assert _chat(gateway, "v1") == "a"  # and loads again
    counted = gateway.scrape()  # the supervisor's counts, from any worker
    assert counted[("vlmgw_model_loads_total", (("model", "v1"), ("outcome", "loaded")))] == 2
    assert counted[("vlmgw_model_unloads_total", (("model", "v1"), ("reason", "evicted")))] == 1
    assert counted[("vlmgw_load_queue_wait_seconds_count", (("model", "v1"),))] >= 4
