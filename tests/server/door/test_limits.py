"""Body cap (413) and per-key rate limits (429 + Retry-After) on a real gateway process.
Each test uses its own key, so the per-key buckets don't leak between tests."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.held_upstream import HeldUpstream
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess
from vlm_gateway.server.door.keys import CALLER_SCOPE, Caller
from vlm_gateway.server.door.limits import RateLimiter

KEYS = [f"sk-limits-{i}" for i in range(6)]
MAX_BODY = 100_000
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def held():
    """Model `slow`'s upstream: its streams send their first event, then wait for release()."""
    with HeldUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, held):
    work = tmp_path_factory.mktemp("limits")
    with FakeUpstream() as upstream:
        config = {
            "data_dir": str(work / "data"),
            "security": {
                "api_keys": KEYS,
                "max_body_bytes": MAX_BODY,
                "requests_per_minute": 3,
                "max_in_flight_per_key": 1,
            },
            "models": [
                {
                    "name": "m",
                    "backend": "openai",
                    "base_url": upstream.base_url,
                    "upstream_model": "ok",
                },
                {
                    "name": "slow",
                    "backend": "openai",
                    "base_url": held.base_url,
                },
            ],
        }
        gateway = GatewayProcess(config, work).start()
        try:
            yield gateway
        finally:
            gateway.stop()


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_a_body_over_the_cap_is_413_in_the_envelope(gateway):
    big = [{"role": "user", "content": "x" * (MAX_BODY + 1)}]
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers=auth(KEYS[0]),
        json={"model": "m", "messages": big},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_sent(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as conn:
        conn.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {KEYS[4]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {50 * MAX_BODY}\r\n\r\n{{".encode()
        )
        head = conn.recv(4096)  # answered although almost none of the body was sent
    assert head.startswith(b"HTTP/1.1 413")


def test_a_chunked_body_is_cut_off_at_the_cap(gateway):
    def chunks():
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(50):
            yield b"x" * 10_000
        yield b'"}]}'

    response = httpx.post(
        gateway.url + "/v1/chat/completions", headers=auth(KEYS[5]), content=chunks()
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_requests_per_minute_give_429_with_retry_after(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS[1], max_retries=0)
    for _ in range(3):
        client.models.list()
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=HI)
    assert caught.value.status_code == 429 and caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    # Another key has its own budget; health checks are never counted.
    openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS[2], max_retries=0).models.list()
    assert all(httpx.get(gateway.url + "/health").status_code == 200 for _ in range(5))


def test_requests_in_flight_per_key_give_429(gateway, held):
    body = {"model": "slow", "messages": HI, "stream": True}  # held: in flight until release
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", headers=auth(KEYS[3]), json=body, timeout=30
    ) as first:
        assert first.status_code == 200
        second = httpx.post(
            gateway.url + "/v1/chat/completions",
            headers=auth(KEYS[3]),
            json={"model": "m", "messages": HI},
        )
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
        assert "in flight" in second.json()["error"]["message"]
        held.release()
        first.read()

    def unless_in_flight() -> httpx.Response | None:
        """The answer, unless the key's slot is still held (a refusal that costs no token)."""
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            headers=auth(KEYS[3]),
            json={"model": "m", "messages": HI},
        )
        refused = response.status_code == 429 and "in flight" in response.text
        return None if refused else response

    third = wait_until(unless_in_flight, "the first request's slot given back")
    assert third.status_code == 200


def test_retry_after_counts_the_seconds_until_a_token_is_back():
    now = [0.0]
    limiter = RateLimiter(requests_per_minute=6, max_in_flight=None, clock=lambda: now[0])
    scope = {"client": ("127.0.0.1", 1)}
    _, shown_as, limits = limiter._limits_of(scope)
    usage = limiter._usage_of("a")
    assert all(limiter._refusal(shown_as, usage, limits) is None for _ in range(6))
    refusal = limiter._refusal(shown_as, usage, limits)
    assert refusal.status_code == 429 and refusal.headers["retry-after"] == "10"
    now[0] = 10.0
    assert limiter._refusal(shown_as, usage, limits) is None


def test_both_limits_apply_and_a_refusal_takes_no_token_from_either():
    """The gateway's 6 a minute and a key's own 2: the third request is the key's own refusal,
    with the wait for its own bucket, and refusals leave the gateway's bucket untouched."""
    now = [0.0]
    limiter = RateLimiter(requests_per_minute=6, max_in_flight=None, clock=lambda: now[0])
    who, shown_as, limits = limiter._limits_of({CALLER_SCOPE: Caller("a", requests_per_minute=2)})
    usage = limiter._usage_of(who)
    assert all(limiter._refusal(shown_as, usage, limits) is None for _ in range(2))
    for _ in range(5):
        refusal = limiter._refusal(shown_as, usage, limits)
        assert refusal.headers["retry-after"] == "30"  # 2 a minute: one back every 30 s
        assert "API key 'a': the key's own limit is 2 requests per minute" in refusal.message
    assert usage.buckets["security.requests_per_minute"].tokens == 4  # 6, less the 2 served
    assert usage.buckets["security.keys[].requests_per_minute"].tokens == 0
