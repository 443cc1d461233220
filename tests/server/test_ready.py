"""GET /ready with one model that serves and one that never will (its upstream is a dead
port): per model with ?model=NAME, and bare under both `ready_policy` values. The gateway's
startup summary names both."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess, free_port


@pytest.fixture(scope="module", params=["all", "any"])
def gateway(request, upstream, tmp_path_factory):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    config = {
        "ready_policy": request.param,
        "models": [
            {"name": "warm", "backend": "openai", "base_url": upstream.base_url},
            {"name": "cold", "backend": "openai", "base_url": dead},
        ],
    }
    workdir = tmp_path_factory.mktemp("ready")
    with GatewayProcess(config, workdir).start(wait_ready=False) as gw:
        wait_until(lambda: _ready(gw, "?model=warm").status_code == 200, "warm is ready")
        yield gw


def _ready(gateway: GatewayProcess, query: str = "") -> httpx.Response:
    return httpx.get(f"{gateway.url}/ready{query}", timeout=10)


def test_a_ready_model_is_200_on_its_own(gateway):
    response = _ready(gateway, "?model=warm")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready" and body["model"] == "warm"
    assert list(body["models"]) == ["warm"]  # that model only
    assert body["models"]["warm"]["state"] == "ready"


def test_a_model_that_cannot_load_is_503_and_says_its_state(gateway):
    response = _ready(gateway, "?model=cold")
    assert response.status_code == 503
    report = response.json()["models"]["cold"]
    assert response.json()["status"] == "not_ready"
    assert report["ready"] is False and report["state"] in ("starting", "unavailable")
    assert "not answering /models" in (report["replicas"][0]["reason"] or "starting")


def test_an_unknown_model_is_404_model_not_found_in_the_envelope(gateway):
    response = _ready(gateway, "?model=nope")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "cold, warm" in error["message"]


def test_bare_ready_follows_the_ready_policy(gateway, request):
    policy = request.node.callspec.params["gateway"]
    response = _ready(gateway)
    body = response.json()
    assert body["policy"] == policy
    assert {name: report["ready"] for name, report in body["models"].items()} == {
        "warm": True,
        "cold": False,
    }
    if policy == "all":  # one model that cannot load keeps the instance unready
        assert (response.status_code, body["status"]) == (503, "not_ready")
    else:
        assert (response.status_code, body["status"]) == (200, "ready")


def test_the_ready_model_serves_while_the_other_cannot(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    assert client.chat.completions.create(model="warm", messages=messages).choices
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="cold", messages=messages)
    assert caught.value.status_code == 503


def test_the_startup_summary_is_one_block_naming_each_model(gateway, request):
    policy = request.node.callspec.params["gateway"]
    log = gateway.log()
    assert log.count("vlm-gateway listening on") == 1
    block = log[log.index("vlm-gateway listening on") :]
    head, warm, cold = block.splitlines()[:3]
    assert f"http://127.0.0.1:{gateway.port} with 2 model(s)" in head
    assert f"ready_policy {policy}" in head
    assert warm.startswith("  model warm: backend openai, 1 replica: ")
    assert cold.startswith("  model cold: backend openai, 1 replica: ")
    # Logged at start, before uvicorn says it serves.
    assert log.index("vlm-gateway listening on") < log.index("Application startup complete")
