"""The request's deadline bounds failover (`request_timeout` of a model): the real gateway
process in front of two fake replicas of one model, the first listed slow to fail: it holds
its 503 until the client has its answer, so the deadline runs out while the first attempt is
still waiting however slow the machine is."""

from __future__ import annotations

import httpx

from tests.support.processes import GatewayProcess
from tests.support.status_upstream import StatusUpstream

ATTEMPTS = "x-vlmgw-attempts"
HI = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def gateway_config(bad: StatusUpstream, good: StatusUpstream, tmp_path, **first) -> dict:
    entries = [
        {"name": "m", "backend": "openai", "base_url": bad.base_url, "eject_after": 1000, **first},
        {"name": "m", "backend": "openai", "base_url": good.base_url},
    ]
    return {"data_dir": str(tmp_path / "data"), "models": entries}


def first_to_reach(
    bad: StatusUpstream, good: StatusUpstream, client: httpx.Client
) -> tuple[httpx.Response, int]:
    """Send requests one after another until one was sent to `bad` first (ties rotate): its
    answer, and how many times `good` was asked during it."""
    for _ in range(4):
        bad_before, good_before = bad.posts, good.posts
        answer = client.post("/v1/chat/completions", json=HI)
        if bad.posts > bad_before:
            return answer, good.posts - good_before
    raise AssertionError("no request reached the first replica")


def test_no_failover_once_the_request_deadline_has_passed(tmp_path):
    # The first replica answers 503 (a failover case) only once released; the deadline is
    # 0.5 s, so the gate opens after the deadline has passed.
    with StatusUpstream(status=503, held=True) as bad, StatusUpstream() as good:
        config = gateway_config(bad, good, tmp_path, request_timeout=0.5)
        gateway = GatewayProcess(config, tmp_path).start()
        with gateway, httpx.Client(base_url=gateway.url, timeout=30) as client:
            answer, good_asked = first_to_reach(bad, good, client)
            bad.release()
    assert answer.status_code == 504, answer.text
    assert answer.json()["error"]["code"] == "request_timeout"
    assert ATTEMPTS not in answer.headers
    assert good_asked == 0  # not failed over: the deadline had passed
    assert "request_timeout (0.5 s)" in answer.json()["error"]["message"]


def test_failover_still_happens_with_time_left_before_the_deadline(tmp_path):
    with StatusUpstream(status=503) as bad, StatusUpstream() as good:
        config = gateway_config(bad, good, tmp_path, request_timeout=30)
        gateway = GatewayProcess(config, tmp_path).start()
        with gateway, httpx.Client(base_url=gateway.url, timeout=30) as client:
            answer, good_asked = first_to_reach(bad, good, client)
    assert answer.status_code == 200 and answer.headers[ATTEMPTS] == "2" and good_asked == 1
