"""Failover before the first byte, tie-breaking and outlier ejection, end to end: the real
gateway process in front of two fake replicas of one model, the first listed failing.

The scenario of issue 15: a sequential client must be served although the first replica
answers every request with an error its health check does not see."""

from collections import Counter

import httpx
import pytest

from tests.support.processes import GatewayProcess
from tests.support.status_upstream import StatusUpstream

ATTEMPTS = "x-vlmgw-attempts"
HI = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def replica_entry(upstream: StatusUpstream, **extra) -> dict:
    return {"name": "m", "backend": "openai", "base_url": upstream.base_url, **extra}


@pytest.fixture
def replicas(request, tmp_path):
    """(bad, good, gateway): `bad` is listed first and answers `request.param` (status, extra
    keys of the first entry)."""
    status, extra = request.param
    with StatusUpstream(status=status) as bad, StatusUpstream() as good:
        config = {
            "data_dir": str(tmp_path / "data"),
            "models": [replica_entry(bad, **extra), replica_entry(good)],
        }
        with GatewayProcess(config, tmp_path).start() as gateway:
            yield bad, good, gateway


def sequential(gateway, n, path="/v1/chat/completions", body=HI) -> list[httpx.Response]:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        return [client.post(path, json=body) for _ in range(n)]


NO_EJECTION = {"eject_after": 1000}


FAILING = [(503, NO_EJECTION), (502, NO_EJECTION), (500, NO_EJECTION)]


@pytest.mark.parametrize("replicas", FAILING, indirect=True)
def test_a_sequential_client_is_served_although_the_first_replica_fails(replicas):
    bad, good, gateway = replicas
    answers = sequential(gateway, 20)
    assert Counter(r.status_code for r in answers) == {200: 20}
    retried = [r for r in answers if r.headers.get(ATTEMPTS) == "2"]
    # Ties rotate: about half went to the bad replica first, and each was tried once more.
    assert len(retried) == bad.posts >= 5
    assert good.posts == 20
    assert all(ATTEMPTS not in r.headers for r in answers if r not in retried)
    metrics = httpx.get(gateway.url + "/metrics").text
    served = f'vlmgw_failovers_total{{model="m",outcome="served"}} {float(len(retried))}'
    assert served in metrics


@pytest.mark.parametrize("replicas", [(503, NO_EJECTION), (500, NO_EJECTION)], indirect=True)
def test_a_stream_whose_opening_failed_is_opened_on_the_other_replica(replicas):
    bad, good, gateway = replicas
    retried = 0
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for _ in range(4):
            with client.stream("POST", "/v1/chat/completions", json={**HI, "stream": True}) as r:
                text = r.read().decode()
                assert r.status_code == 200 and text.endswith("data: [DONE]\n\n")
                retried += r.headers.get(ATTEMPTS) == "2"
    assert retried == bad.posts >= 1 and good.posts == 4


@pytest.mark.parametrize("replicas", [(503, NO_EJECTION)], indirect=True)
def test_responses_messages_and_completions_fail_over_too(replicas):
    bad, good, gateway = replicas
    responses = sequential(gateway, 3, "/v1/responses", {"model": "m", "input": "hi"})
    messages = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    anthropic = sequential(gateway, 3, "/v1/messages", messages)
    completions = sequential(gateway, 3, "/v1/completions", {"model": "m", "prompt": "hi"})
    assert [r.status_code for r in responses + anthropic + completions] == [200] * 9
    assert bad.posts >= 4 and good.posts == 9


WITHOUT_500 = {"failover_on": [502, 503, 504], **NO_EJECTION}


@pytest.mark.parametrize("replicas", [(400, {}), (500, WITHOUT_500)], indirect=True)
def test_a_4xx_or_a_status_left_out_of_failover_on_is_not_retried(replicas):
    bad, good, gateway = replicas
    answers = sequential(gateway, 6)
    failed = [r for r in answers if r.status_code != 200]
    assert len(failed) == bad.posts >= 2 and good.posts == 6 - len(failed)
    assert good.posts >= 2  # ties rotate: not every request went to the first listed
    assert all(ATTEMPTS not in r.headers for r in answers)
    assert all(r.json()["error"]["message"] for r in failed)


@pytest.mark.parametrize("replicas", [(503, {"retry_budget": 0, **NO_EJECTION})], indirect=True)
def test_a_zero_retry_budget_turns_failover_off(replicas):
    bad, _good, gateway = replicas
    answers = sequential(gateway, 6)
    assert sum(r.status_code == 503 for r in answers) == bad.posts >= 2


@pytest.mark.parametrize("replicas", [(200, {"timeout": 0.5})], indirect=True)
def test_a_timeout_before_the_answer_head_fails_over(replicas):
    bad, good, gateway = replicas
    bad.held = True  # its answers wait for the fixture's exit: the 0.5 s timeout always acts
    answers = sequential(gateway, 4)
    assert [r.status_code for r in answers] == [200] * 4
    assert sum(r.headers.get(ATTEMPTS) == "2" for r in answers) == bad.posts >= 1


@pytest.mark.parametrize("replicas", [(500, {})], indirect=True)
def test_five_failures_in_a_row_eject_the_replica_and_say_so(replicas):
    bad, good, gateway = replicas
    answers = sequential(gateway, 40)
    # Each of its 500s was failed over (the client saw none of them), then it was out.
    assert Counter(r.status_code for r in answers) == {200: 40}
    assert sum(r.headers.get(ATTEMPTS) == "2" for r in answers) == bad.posts
    assert 5 <= bad.posts < 10 and good.posts == 40
    card = httpx.get(gateway.url + "/v1/models/m").json()["vlm_gateway"]
    assert card["replicas"][0]["ejections_in_a_row"] >= 1  # until a success clears it
    assert card["replicas"][1]["state"] == "ready"
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'vlmgw_replica_ejections_total{model="m",replica="0"}' in metrics
    assert "replica 0 ejected for 5 s after failing 5 times in a row" in gateway.log()
