"""In-process BLIP-2 under `serve --workers 2`: one model copy, in the supervisor, answering
both workers; the workers never load torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai

from tests.support.images import image_message, png_data_url
from tests.support.polling import wait_until
from tests.support.processes import REPO, free_port, stop_process_group, wait_http


def _maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def _workers(supervisor: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == supervisor and b"vlm_gateway.cli.worker" in cmdline:
                found.append(int(entry.name))
    return found


def _two_workers(supervisor: int) -> list[int]:
    workers = _workers(supervisor)
    return workers if len(workers) == 2 else []


def _caption(url: str, seed: int) -> openai.types.chat.ChatCompletion | None:
    """One request on a connection of its own; None for a 503 (a worker not yet ready)."""
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        try:
            return client.chat.completions.create(
                model="blip2",
                messages=[image_message("Question: what is it? Answer:", png_data_url(seed=seed))],
                max_tokens=3,
            )
        except openai.InternalServerError as exc:
            if exc.status_code != 503:
                raise
            return None


def test_one_blip2_copy_in_the_supervisor_serves_every_worker(tiny_models, tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "vlm_gateway", "serve", "--model", str(tiny_models["blip2"])]
    argv += ["--port", str(port), "--workers", "2"]
    log_path = tmp_path / "gateway.log"
    env = {**os.environ, "VLMGW_DATA_DIR": str(tmp_path / "data")}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/ready", 300, proc, log_path)
        workers = wait_until(lambda: _two_workers(proc.pid), "two workers running")
        # Each worker learns the model is ready from its own probe of the backplane (every
        # second), so one may still answer 503 just after the other said ready on /ready.
        wait_until(lambda: all(_caption(url, seed) for seed in range(4)), "both workers ready")
        for seed in range(6):  # a client each, so a connection each: both workers take some
            reply = _caption(url, seed)
            assert reply and reply.model == "blip2" and reply.choices[0].message.content
        assert _maps_torch(proc.pid)  # the one copy
        assert not any(_maps_torch(pid) for pid in workers)
    finally:
        stop_process_group(proc)
