"""`failover_on` (issue 23, item 7): an upstream 500 before the first byte is failed over like
a 502/503/504, so a replica that answers 500 to everything no longer costs clients a failed
request per failure until it is ejected; and the poison-request guard: a request that got a
500 from two replicas is not tried on a third."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from tests.support.polling import until
from tests.support.processes import GatewayProcess
from tests.support.status_upstream import StatusUpstream
from tests.support.upstream_process import UpstreamProcess
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.server import failover
from vlm_gateway.server.app import create_app
from vlm_gateway.server.state import state_of

ATTEMPTS = "x-vlmgw-attempts"
MESSAGES: Any = [{"role": "user", "content": "hi"}]


def sdk_outcomes(gateway: GatewayProcess, n: int) -> tuple[int, int, list[str]]:
    """`n` sequential chats through the official SDK, which must not retry on its own: how
    many answered 200, how many of those took a second attempt, and the failures' words."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    ok, failed_over, failures = 0, 0, []
    for _ in range(n):
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="m", messages=MESSAGES, max_tokens=1
            )
        except openai.APIStatusError as exc:
            failures.append(f"{exc.status_code}: {exc.message}")
            continue
        ok += raw.parse().choices[0].message.content == "fine"
        failed_over += raw.headers.get(ATTEMPTS) == "2"
    return ok, failed_over, failures


def test_a_replica_answering_500_to_everything_costs_the_sdk_client_nothing(tmp_path):
    with UpstreamProcess(status=500) as bad, UpstreamProcess() as good:
        entries = [{"name": "m", "backend": "openai", "base_url": u.base_url} for u in (bad, good)]
        config = {"data_dir": str(tmp_path / "data"), "models": entries}
        with GatewayProcess(config, tmp_path).start() as gateway:
            ok, failed_over, failures = sdk_outcomes(gateway, 40)
            log = gateway.log()
    print(f"\n40 sequential chats, one replica of two answering 500: {ok} x 200 "
          f"({failed_over} failed over), failures: {failures}")  # fmt: skip
    assert ok >= 39, failures
    # Ties rotate, so the 500 replica was reached (and failed over) until it was ejected.
    assert failed_over >= 1
    assert "replica 0 ejected" in log


def in_process_gateway(upstreams: list[StatusUpstream], tmp_path: Any) -> Any:
    entries = [{"name": "m", "backend": "openai", "base_url": u.base_url} for u in upstreams]
    settings = settings_model().model_validate(
        {"data_dir": str(tmp_path), "models": [{**entries[0], "eject_after": 1000}, *entries[1:]]}
    )
    return create_app(settings)


def post_once(upstreams: list[StatusUpstream], tmp_path: Any) -> httpx.Response:
    """One chat through the app in this process, once every replica is ready."""
    app = in_process_gateway(upstreams, tmp_path)

    async def run() -> httpx.Response:
        async with app.router.lifespan_context(app):
            replicas = state_of(app).registry.replicas("m")
            await until(lambda: all(b.status.ready for b in replicas), "every replica ready")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                body = {"model": "m", "messages": MESSAGES, "max_tokens": 1}
                return await http.post("/v1/chat/completions", json=body)

    return asyncio.run(run())


@pytest.fixture
def more_attempts(monkeypatch):
    """As if MAX_ATTEMPTS were raised: the guard must hold by itself, not by the attempt cap."""
    monkeypatch.setattr(failover, "MAX_ATTEMPTS", 4)


# A 500 from two replicas stops at two attempts (the poison guard); the control: three 503s
# are tried on all three replicas, so what stops the 500s is the guard, not the attempt cap.
@pytest.mark.parametrize(("status", "answered", "attempts"), [(500, 502, 2), (503, 503, 3)])
def test_a_request_that_got_a_500_from_two_replicas_is_not_tried_on_a_third(
    tmp_path, more_attempts, status, answered, attempts
):
    with StatusUpstream(status) as a, StatusUpstream(status) as b, StatusUpstream(status) as c:
        answer = post_once([a, b, c], tmp_path)
        assert (answer.status_code, answer.headers[ATTEMPTS]) == (answered, str(attempts))
        assert a.posts + b.posts + c.posts == attempts
