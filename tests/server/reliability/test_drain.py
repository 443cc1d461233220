"""Graceful drain on SIGTERM, end to end: `vlm-gateway serve` as a real process on 127.0.0.1 in
front of an upstream that holds its answers until the test releases them
(tests/support/held_upstream.py; the batch test: gated_upstream.py) and, where the order of the
stop matters, a managed "vllm" (marking_vllm.py: tests/support/fake_vllm.py that notes its
SIGTERM).

Each test sends SIGTERM to the gateway's own pid, as an orchestrator does."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.server.batch.batch_support import chat_line, jsonl, result_lines, wait_final
from tests.support.gated_upstream import GatedUpstream
from tests.support.held_upstream import ANSWER, HeldUpstream
from tests.support.managed import process_group_members
from tests.support.polling import wait_until
from tests.support.processes import (
    REPO,
    GatewayProcess,
    free_port,
    stop_process_group,
    wait_http,
)

Gateway = "GatewayProcess | WorkersGateway"  # one process, or a supervisor with workers
HI = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
FIRST_WORDS = b'"the whole "'  # in the stream's first event, however the gateway frames it
MARKING_VLLM = [sys.executable, "-m", "tests.server.reliability.marking_vllm"]


@dataclass
class Done:
    status: int
    text: str
    at_ns: int  # time.time_ns() when the client had the whole answer


def config(upstream: HeldUpstream, tmp_path: Path, grace_s: float, vllm: bool = False) -> dict:
    models: list[dict] = [{"name": "m", "backend": "openai", "base_url": upstream.base_url}]
    if vllm:
        env = {"PYTHONPATH": str(REPO), "FAKE_VLLM_STOP_MARK": str(tmp_path / "vllm-stopped")}
        models.append(
            {
                "name": "v",
                "backend": "vllm",
                "model": "tiny",
                "command": MARKING_VLLM,
                "env": env,
                "startup_timeout": 60,
                "liveness_interval": 3600,
            }  # fmt: skip
        )
    return {"data_dir": str(tmp_path / "data"), "shutdown_grace": grace_s, "models": models}


def post_json(url: str) -> Done:
    response = httpx.post(url + "/v1/chat/completions", json=HI, timeout=120)
    return Done(response.status_code, response.text, time.time_ns())


def post_stream(url: str, first_seen: threading.Event) -> Done:
    body = {**HI, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as response:
        text = b""
        for chunk in response.iter_raw():
            text += chunk
            if FIRST_WORDS in text:
                first_seen.set()
        return Done(response.status_code, text.decode(), time.time_ns())


class HeldRequests:
    """A JSON request and a stream, both held by the upstream (the stream after its first
    event reached the client)."""

    def __init__(self, gateway: Gateway, upstream: HeldUpstream) -> None:
        self._pool = ThreadPoolExecutor(2)
        first_seen = threading.Event()
        self.json: Future[Done] = self._pool.submit(post_json, gateway.url)
        self.stream: Future[Done] = self._pool.submit(post_stream, gateway.url, first_seen)
        upstream.wait_arrivals(2)
        wait_until(first_seen.is_set, "the stream's first event at the client")

    def finish(self, upstream: HeldUpstream, gateway: Gateway) -> tuple[Done, Done]:
        """Let the upstream answer; both results, once the gateway has exited 0."""
        upstream.release()
        answer, stream = self.results()
        assert gateway.proc is not None
        assert gateway.proc.wait(60) == 0, gateway.log()[-3000:]
        return answer, stream

    def results(self) -> tuple[Done, Done]:
        try:
            return self.json.result(120), self.stream.result(120)
        finally:
            self._pool.shutdown()


def sigterm(gateway: Gateway) -> None:
    assert gateway.proc is not None
    os.kill(gateway.proc.pid, signal.SIGTERM)


@contextlib.contextmanager
def ready_probe(gateway: Gateway) -> Iterator[httpx.Client]:
    """A client whose kept-alive connection, opened now, asks /ready during the drain."""
    with httpx.Client(base_url=gateway.url, timeout=30) as probe:
        assert probe.get("/ready").status_code == 200
        yield probe


def wait_draining(probe: httpx.Client) -> httpx.Response:
    """Poll /ready on the probe's kept-alive connection until it says 503 draining."""
    return wait_until(
        lambda: (answer := probe.get("/ready")).status_code == 503 and answer, "/ready 503"
    )


def replica_of_v(gateway: Gateway) -> dict:
    """The managed vLLM's report (pid, url), as /v1/models shows it."""
    card = httpx.get(gateway.url + "/v1/models/v", timeout=10).json()
    return card["vlm_gateway"]["replicas"][0]


def refused(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=10)
    except httpx.ConnectError:
        return True
    return False


def test_sigterm_lets_open_json_and_stream_requests_finish_and_exits_0(tmp_path):
    with HeldUpstream() as upstream:
        gateway = GatewayProcess(config(upstream, tmp_path, grace_s=60), tmp_path).start()
        try:
            held = HeldRequests(gateway, upstream)
            with ready_probe(gateway) as probe:
                sigterm(gateway)
                ready = wait_draining(probe)
            assert ready.json()["status"] == "draining" and ready.json()["reason"]
            assert ready.headers["connection"] == "close"  # the client moves elsewhere
            assert refused(gateway.url)  # the listening socket is closed
            assert gateway.proc.poll() is None  # still serving the two held requests
            answer, stream = held.finish(upstream, gateway)
        finally:
            gateway.stop()
    assert answer.status == 200
    assert json.loads(answer.text)["choices"][0]["message"]["content"] == ANSWER
    assert stream.status == 200 and stream.text.endswith("data: [DONE]\n\n")
    assert '"the whole "' in stream.text and '"answer"' in stream.text
    assert "drained in" in gateway.log()


def test_requests_still_open_at_shutdown_grace_are_cut_with_an_error_and_exit_is_0(tmp_path):
    grace_s = 1.0
    with HeldUpstream() as upstream:  # never released
        gateway = GatewayProcess(config(upstream, tmp_path, grace_s), tmp_path).start()
        try:
            held = HeldRequests(gateway, upstream)
            signalled = time.monotonic()
            sigterm(gateway)
            answer, stream = held.results()
            assert gateway.proc.wait(60) == 0, gateway.log()[-3000:]
            took = time.monotonic() - signalled
        finally:
            gateway.stop()
    assert answer.status == 503
    assert json.loads(answer.text)["error"]["code"] == "shutting_down"
    # The stream had begun: it ends with an error event, not a silent cut.
    assert stream.status == 200 and stream.text.startswith("data: ")
    assert FIRST_WORDS.decode() in stream.text.split("\n\n")[0]
    last = stream.text.strip().split("\n\n")[-1]
    assert json.loads(last.removeprefix("data: "))["error"]["code"] == "shutting_down"
    assert "[DONE]" not in stream.text
    # Cut at the grace, not before; and the exit follows (a generous margin: a busy machine).
    assert grace_s <= took < grace_s + 20
    assert "2 request(s) cut" in gateway.log()


def test_managed_vllm_is_stopped_only_after_the_open_requests_finished(tmp_path):
    mark = tmp_path / "vllm-stopped"
    with HeldUpstream() as upstream:
        gateway = GatewayProcess(config(upstream, tmp_path, 60, vllm=True), tmp_path).start()
        try:
            vllm_url = replica_of_v(gateway)["url"]
            held = HeldRequests(gateway, upstream)
            with ready_probe(gateway) as probe:
                sigterm(gateway)
                wait_draining(probe)
            # The HTTP side is waiting for the held requests: vLLM must still run and answer.
            wait_until(lambda: "waiting for 2 request(s)" in gateway.log(), "the drain waits")
            assert httpx.get(vllm_url + "/models", timeout=10).status_code == 200
            assert not mark.exists()
            answer, stream = held.finish(upstream, gateway)
        finally:
            gateway.stop()
    assert answer.status == 200 and stream.text.endswith("data: [DONE]\n\n")
    stopped_at = int(mark.read_text())
    assert stopped_at > max(answer.at_ns, stream.at_ns)


def test_a_second_sigterm_stops_at_once_and_kills_managed_vllm(tmp_path):
    with HeldUpstream() as upstream:
        gateway = GatewayProcess(config(upstream, tmp_path, 600, vllm=True), tmp_path).start()
        try:
            vllm_group = replica_of_v(gateway)["pid"]
            assert process_group_members(vllm_group)
            held = HeldRequests(gateway, upstream)
            with ready_probe(gateway) as probe:
                sigterm(gateway)
                wait_draining(probe)
            sigterm(gateway)
            # At once: the held requests would keep a drain going for 600 s.
            assert gateway.proc.wait(60) == 128 + signal.SIGTERM
            wait_until(lambda: not process_group_members(vllm_group), "vLLM's group gone")
            with pytest.raises(httpx.HTTPError):
                held.results()  # cut with the process
        finally:
            gateway.stop()
    assert "stopping at once" in gateway.log()


def test_a_batch_running_at_sigterm_loses_and_repeats_no_row_after_the_restart(tmp_path):
    total, answered = 1000, 50  # the upstream holds every row after the first `answered`
    with GatedUpstream(answer_first=answered) as upstream:
        entry = {"name": "ok", "backend": "openai", "base_url": upstream.base_url}
        settings = {"data_dir": str(tmp_path / "data"), "batch": {"concurrency_per_model": 2}}
        gateway = GatewayProcess({**settings, "models": [entry]}, tmp_path).start()
        try:
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
            lines = [chat_line(f"r{i}", "ok") for i in range(total)]
            file = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
            batch = client.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )

            def done_if_answered() -> int | None:
                counts = client.batches.retrieve(batch.id).request_counts
                return counts.completed if counts.completed >= answered else None

            done = wait_until(done_if_answered, f"{answered} requests done")
            # Rows in flight, held: the SIGTERM cannot come after the batch's end.
            wait_until(lambda: upstream.held >= 1, "rows held at the upstream")
            sigterm(gateway)
            assert gateway.proc.wait(60) == 0, gateway.log()[-3000:]
            assert done < total, "the batch finished before the SIGTERM"
            upstream.release()
            gateway.start()  # same port, config and data dir: the batch resumes
            batch = wait_final(client, batch.id, deadline_s=120)
            seen = Counter(line["custom_id"] for line in result_lines(client, batch.output_file_id))
            seen.update(line["custom_id"] for line in result_lines(client, batch.error_file_id))
        finally:
            gateway.stop()
    assert batch.status == "completed"
    assert set(seen) == {f"r{i}" for i in range(total)} and max(seen.values()) == 1
    assert batch.request_counts.completed == total


class WorkersGateway:
    """`vlm-gateway serve --workers 2` (a supervisor and two worker processes)."""

    def __init__(self, config: dict, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = workdir / "workers.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "workers.log"
        argv = [sys.executable, "-m", "vlm_gateway", "serve", "--config", str(path), "--host"]
        argv += ["127.0.0.1", "--port", str(self.port), "--workers", "2"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
            )
        wait_http(self.url + "/ready", 120, self.proc, self.log_path)
        # /ready answered from one worker; the other may still be starting (its signal
        # handlers not yet in place): wait for the backplane's and both workers' startups.
        started = "Application startup complete."
        wait_until(lambda: self.log().count(started) == 3, "both workers started", 120)

    def log(self) -> str:
        return self.log_path.read_text()

    def vllm_pid(self) -> int:
        """The managed vLLM (the supervisor runs it; workers' /v1/models do not show pids)."""
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.proc.pid and b"marking_vllm" in cmdline:
                return int(entry.name)
        raise AssertionError("no managed vLLM under the supervisor")

    def stop(self) -> None:
        stop_process_group(self.proc)


def test_serve_with_workers_drains_alike_and_a_second_sigterm_stops_at_once(tmp_path):
    with HeldUpstream() as upstream:
        gateway = WorkersGateway(config(upstream, tmp_path, 600, vllm=True), tmp_path)
        try:
            vllm_group = gateway.vllm_pid()
            held = HeldRequests(gateway, upstream)
            with ready_probe(gateway) as probe:  # served by one of the workers
                sigterm(gateway)
                ready = wait_draining(probe)
            assert ready.json()["status"] == "draining"
            wait_until(lambda: refused(gateway.url), "new connections refused")
            assert gateway.proc.poll() is None  # draining the two held requests
            sigterm(gateway)
            assert gateway.proc.wait(60) == 128 + signal.SIGTERM
            wait_until(lambda: not process_group_members(vllm_group), "vLLM's group gone")
            with pytest.raises(httpx.HTTPError):
                held.results()
        finally:
            gateway.stop()
    assert "stopping at once" in gateway.log()


def test_ctrl_c_on_serve_with_workers_is_one_drain_not_two_signals(tmp_path):
    """Ctrl-C reaches the supervisor and its workers (one process group), then the supervisor
    sends each worker SIGTERM: the workers still drain, they do not stop at once."""
    with HeldUpstream() as upstream:
        gateway = WorkersGateway(config(upstream, tmp_path, 600), tmp_path)
        try:
            held = HeldRequests(gateway, upstream)
            os.killpg(gateway.proc.pid, signal.SIGINT)
            wait_until(lambda: refused(gateway.url), "new connections refused")
            wait_until(lambda: gateway.log().count("draining: /ready answers 503") == 2, "drains")
            answer, stream = held.finish(upstream, gateway)
        finally:
            gateway.stop()
    assert answer.status == 200 and stream.text.endswith("data: [DONE]\n\n")
