"""`vlm-gateway serve --workers 2` as real processes on 127.0.0.1: a supervisor, two worker
processes on one listening socket, the fake upstream behind them and a managed "vllm"
(tests/support/fake_vllm.py) that only the supervisor runs."""

from __future__ import annotations

import json
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.held_upstream import HeldUpstream
from tests.support.polling import wait_until
from tests.support.processes import REPO
from tests.support.workers_gateway import WorkersGateway

HI = [{"role": "user", "content": "hi"}]
FAKE_VLLM = [sys.executable, "-m", "tests.support.fake_vllm"]
RPM = 6


def _listening_inode(port: int) -> str:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
            return fields[9]
    raise AssertionError(f"nothing listens on port {port}")


def _holds_socket(pid: int, inode: str) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    return any(os.readlink(fd) == f"socket:[{inode}]" for fd in fds.iterdir())


def _chat(url: str, model: str = "remote", key: str = "unused") -> int:
    """One request on a connection of its own, so the kernel picks a worker for each."""
    with httpx.Client(timeout=30, headers={"authorization": f"Bearer {key}"}) as client:
        body = {"model": model, "messages": HI}
        return client.post(url + "/v1/chat/completions", json=body).status_code


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream(record=False) as up:
        yield up


@pytest.fixture(scope="module")
def limited(upstream, tmp_path_factory):
    """Two workers, a remote model, key a limited to RPM requests a minute, b and c not."""
    remote = {"name": "remote", "backend": "openai", "base_url": upstream.base_url}
    keys = [
        {"name": "a", "key": "ka", "requests_per_minute": RPM},
        {"name": "b", "key": "kb"},
        {"name": "c", "key": "kc"},
    ]
    config = {"security": {"keys": keys}, "models": [remote]}
    gateway = WorkersGateway(config, tmp_path_factory.mktemp("workers-limited"))
    yield gateway
    gateway.stop()


def test_two_workers_serve_one_port_and_share_the_rate_limit(limited):
    workers = limited.workers()
    inode = _listening_inode(limited.port)
    assert all(_holds_socket(pid, inode) for pid in workers)
    statuses: list[int] = []
    with ThreadPoolExecutor(4) as pool:

        def both_busy() -> bool:
            statuses.extend(pool.map(lambda _: _chat(limited.url, key="ka"), range(8)))
            counts = limited.served_by()
            return all(counts.get(pid, 0) >= RPM for pid in workers)

        wait_until(both_busy, "each worker answered at least RPM requests", interval_s=0)
    # Each worker alone would have let RPM through: together they let RPM through.
    assert statuses.count(200) == RPM
    assert statuses.count(429) == len(statuses) - RPM


def test_metrics_from_both_workers_in_one_scrape(limited):
    counts = limited.served_by()
    assert len([pid for pid in limited.workers() if counts.get(pid)]) == 2
    scraped = limited.scrape()
    chat = {
        labels: value
        for (name, labels), value in scraped.items()
        if name == "vlmgw_requests_total" and ("route", "/v1/chat/completions") in labels
    }
    ok = sum(v for labels, v in chat.items() if ("status", "200") in labels)
    refused = sum(v for labels, v in chat.items() if ("status", "429") in labels)
    assert ok == RPM and refused > 0
    # The scrape (whichever worker answered it) holds every worker's count of chats.
    per_worker_chats = sum(counts.values()) - sum(
        v
        for (name, labels), v in scraped.items()
        if name == "vlmgw_requests_total" and ("route", "/v1/chat/completions") not in labels
    )
    assert ok + refused == per_worker_chats


def test_files_and_batches_go_to_the_supervisor_as_the_callers_own(limited, tmp_path):
    """Uploads and batches through the workers land in the supervisor's one store and runner,
    owned by the key that sent them, whichever worker each request reached."""
    line = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions"}
    line["body"] = {"model": "remote", "messages": HI}
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(line) + "\n")
    b = openai.OpenAI(base_url=limited.url + "/v1", api_key="kb", max_retries=0)
    uploaded = b.files.create(file=path.open("rb"), purpose="batch")
    batch = b.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_until(
        lambda: (found := b.batches.retrieve(batch.id)).status == "completed" and found,
        "the batch completed",
        interval_s=0.2,
    )
    assert done.request_counts.completed == 1
    assert (limited.data_dir / "files" / uploaded.id).is_file()  # the supervisor's store
    result = json.loads(b.files.content(done.output_file_id).text)
    assert result["custom_id"] == "1" and result["response"]["status_code"] == 200
    c = openai.OpenAI(base_url=limited.url + "/v1", api_key="kc", max_retries=0)
    with pytest.raises(openai.NotFoundError):  # another tenant's batch
        c.batches.retrieve(batch.id)


@pytest.fixture
def held():
    """Model `held`'s upstream: its streams send their first event, then wait for release()."""
    with HeldUpstream() as up:
        yield up


@pytest.fixture
def managed(upstream, held, tmp_path):
    remote = {"name": "remote", "backend": "openai", "base_url": upstream.base_url}
    vllm = {
        "name": "v",
        "backend": "vllm",
        "model": "tiny",
        "command": FAKE_VLLM,
        "env": {"PYTHONPATH": str(REPO)},
        "startup_timeout": 60,
        "liveness_interval": 3600,
    }
    gated = {"name": "held", "backend": "openai", "base_url": held.base_url}
    gateway = WorkersGateway({"models": [remote, vllm, gated]}, tmp_path)
    yield gateway
    gateway.stop()


def test_a_killed_worker_is_replaced_and_managed_vllm_is_untouched(managed):
    (vllm_pid,) = managed.children("tests.support.fake_vllm")
    killed, survivor = managed.workers()
    os.kill(killed, signal.SIGKILL)
    # Requests keep flowing: the survivor takes every connection until the replacement runs.
    assert all(_chat(managed.url, "remote") == 200 for _ in range(20))
    assert all(_chat(managed.url, "v") == 200 for _ in range(5))

    def two_again() -> list[int]:
        running = managed.workers()
        return running if len(running) == 2 and killed not in running else []

    replaced = wait_until(two_again, "a replacement worker running")
    (replacement,) = set(replaced) - {survivor}

    def replacement_served() -> bool:
        _chat(managed.url, "v")
        return managed.served_by().get(replacement, 0) > 0

    wait_until(replacement_served, "the replacement worker answers requests")
    assert managed.children("tests.support.fake_vllm") == [vllm_pid]
    restarts = managed.scrape()[("vlmgw_vllm_restarts_total", (("model", "v"), ("replica", "0")))]
    assert restarts == 0
    assert f"(pid {killed}) exited with -9" in managed.log()


def test_sigterm_drains_open_requests_and_stops_everything(managed, held):
    (vllm_pid,) = managed.children("tests.support.fake_vllm")
    workers = managed.workers()
    client = openai.OpenAI(base_url=managed.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="held", messages=HI, stream=True)
    first = next(iter(stream))
    assert first.choices is not None
    os.kill(managed.proc.pid, signal.SIGTERM)
    # The stream is held upstream, so its worker drains it, whatever the machine's speed.
    draining = "draining: /ready answers 503, no new connections; 1 request(s) in flight"
    wait_until(lambda: draining in managed.log(), "a worker draining the open stream")
    assert managed.proc.poll() is None
    held.release()
    rest = list(stream)  # the open stream runs to its end
    assert rest and rest[-1].choices[0].finish_reason is not None
    assert managed.proc.wait(60) == 0
    for pid in [vllm_pid, *workers]:
        wait_until(lambda pid=pid: not _alive(pid), f"process {pid} gone")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
