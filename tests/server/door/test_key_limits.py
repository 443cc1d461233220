"""Each key's own limits on top of the gateway's per-key ones, on a real gateway process: the
key's own requests per minute and requests in flight, and the gateway's default, each refuse
with 429 + Retry-After and a message naming the limit that was hit, while another key is
served. The in-flight slot is held by a request the fake upstream stalls until the client
hangs up."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess
from tests.support.settings import DEAD_UPSTREAM, upstream_entry
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.server.app import create_app

GATEWAY_RPM = 4
KEYS = {name: f"sk-key-limits-{name}-0123456789" for name in ("rpm", "slots", "plain", "other")}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    work = tmp_path_factory.mktemp("key-limits")
    with FakeUpstream() as upstream:
        config = {
            "data_dir": str(work / "data"),
            "security": {
                "requests_per_minute": GATEWAY_RPM,  # every key's default
                "keys": [
                    {"name": "rpm", "key": KEYS["rpm"], "requests_per_minute": 2},
                    # digest-only: its own limit applies all the same
                    {
                        "name": "slots",
                        "sha256": hashlib.sha256(KEYS["slots"].encode()).hexdigest(),
                        "max_in_flight": 1,
                    },
                    {"name": "plain", "key": KEYS["plain"]},
                    {"name": "other", "key": KEYS["other"]},
                ],
            },
            "models": [
                upstream_entry("m", upstream.base_url, "ok"),
                upstream_entry("stall", upstream.base_url, "fault-stall"),
            ],
        }
        with GatewayProcess(config, work) as gateway:
            yield gateway, upstream


def sdk(gateway: GatewayProcess, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS[name], max_retries=0)


def refused(call) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as caught:
        call()
    error = caught.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert error.body["type"] == "rate_limit_exceeded"
    return error


def test_the_keys_own_requests_per_minute_refuse_before_the_gateways(servers):
    gateway, _ = servers
    client = sdk(gateway, "rpm")
    for _ in range(2):
        client.chat.completions.create(model="m", messages=HI)
    error = refused(lambda: client.chat.completions.create(model="m", messages=HI))
    wait = error.response.headers["retry-after"]
    assert int(wait) >= 1
    assert error.body["message"] == (
        "Rate limit reached for API key 'rpm': the key's own limit is 2 requests per minute "
        f"(security.keys[].requests_per_minute). Retry in {wait} s."
    )
    assert sdk(gateway, "other").chat.completions.create(model="m", messages=HI).choices


def test_a_key_without_its_own_limit_gets_the_gateways_per_key_limit(servers):
    gateway, _ = servers
    client = sdk(gateway, "plain")
    for _ in range(GATEWAY_RPM):
        client.models.list()
    error = refused(client.models.list)
    assert int(error.response.headers["retry-after"]) >= 1
    assert error.body["message"].startswith(
        "Rate limit reached for API key 'plain': the gateway's per-key limit is "
        f"{GATEWAY_RPM} requests per minute (security.requests_per_minute)."
    )
    assert sdk(gateway, "other").models.list().data


@contextlib.contextmanager
def held_request(gateway: GatewayProcess, upstream: FakeUpstream, key: str) -> Iterator[None]:
    """A chat request the fake upstream holds until this block ends and the client hangs up
    (the gateway then abandons it and gives its slot back)."""
    before = len(upstream.requests)
    body = json.dumps({"model": "stall", "messages": HI}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as conn:
        conn.sendall(head.encode() + body)
        wait_until(lambda: len(upstream.requests) > before, "the held request at the upstream")
        yield


def test_the_keys_own_requests_in_flight_refuse_while_another_key_is_served(servers):
    gateway, upstream = servers
    client = sdk(gateway, "slots")
    with held_request(gateway, upstream, KEYS["slots"]):
        error = refused(lambda: client.chat.completions.create(model="m", messages=HI))
        assert error.response.headers["retry-after"] == "1"
        assert error.body["message"] == (
            "Too many requests in flight for API key 'slots': the key's own limit is 1 "
            "(security.keys[].max_in_flight)."
        )
        assert sdk(gateway, "other").chat.completions.create(model="m", messages=HI).choices

    def served_again() -> bool:
        try:
            return bool(client.chat.completions.create(model="m", messages=HI).choices)
        except openai.RateLimitError as still:
            assert "in flight" in still.body["message"]  # the slot, not a per-minute budget
            return False

    wait_until(served_again, "the held request's slot given back")


def test_refusals_name_the_key_never_the_key_itself(servers):
    gateway, _ = servers
    log = gateway.log()
    assert all(key not in log for key in KEYS.values())


def test_a_keys_own_limit_applies_with_no_gateway_wide_limit(tmp_path):
    """In process: only a key's own limit is configured, so the limit middleware must be
    installed for it alone."""
    settings = settings_model().model_validate(
        {
            "data_dir": str(tmp_path),
            "security": {
                "keys": [
                    {"name": "rpm", "key": KEYS["rpm"], "requests_per_minute": 1},
                    {"name": "other", "key": KEYS["other"]},
                ]
            },
            "models": [upstream_entry("m", DEAD_UPSTREAM, "ok")],
        }
    )
    app = create_app(settings)

    async def scenario() -> list[int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                statuses = []
                for name in ("rpm", "rpm", "other", "other", "other"):
                    headers = {"authorization": f"Bearer {KEYS[name]}"}
                    statuses.append((await client.get("/v1/models", headers=headers)).status_code)
                return statuses

    assert asyncio.run(scenario()) == [200, 429, 200, 200, 200]
