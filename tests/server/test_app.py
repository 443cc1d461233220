"""The HTTP face with no upstream at all: routing errors, validation, readiness, models."""

import httpx
import openai
import pytest

from tests.support.processes import GatewayProcess, free_port

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    config = {"models": [{"name": "cold", "backend": "openai", "base_url": dead}]}
    with GatewayProcess(config, tmp_path_factory.mktemp("app")).start(wait_ready=False) as gw:
        yield gw


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=HI)
    assert info.value.code == "model_not_found"
    assert "cold" in info.value.message


def test_missing_messages_is_400_naming_messages(gateway):
    response = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "cold"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


def test_sdk_raises_bad_request_for_invalid_fields(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="cold", messages=HI, temperature=3)
    assert info.value.status_code == 400 and info.value.param == "temperature"


@pytest.mark.parametrize("body", [b"", b"{not json", b"[]", b'"text"'])
def test_malformed_bodies_are_400_in_the_envelope(gateway, body):
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_model_with_no_ready_backend_is_503_at_once(client):
    # Nothing will ever listen for "cold": a gateway that held the request until a backend
    # is ready would never answer (the client's timeout only turns that hang into a failure).
    with pytest.raises(openai.InternalServerError) as info:
        client.with_options(timeout=30).chat.completions.create(
            model="cold", messages=HI, stream=True
        )
    assert info.value.status_code == 503 and info.value.body["code"] == "model_not_ready"
    assert "no ready backend" in info.value.message


def test_unknown_route_and_method_use_the_envelope(gateway):
    missing = httpx.get(gateway.url + "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    wrong_method = httpx.get(gateway.url + "/v1/chat/completions")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_health_is_up_while_ready_reports_each_model(gateway):
    assert httpx.get(gateway.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/ready")
    assert ready.status_code == 503
    model = ready.json()["models"]["cold"]
    assert model["ready"] is False
    assert model["replicas"][0]["state"] in ("starting", "unavailable")


def test_models_list_has_openai_shape(client):
    (model,) = client.models.list().data
    assert (model.id, model.object, model.owned_by) == ("cold", "model", "vlm-gateway")
    assert client.models.retrieve("cold").id == "cold"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_models_say_their_image_limits_up_front(client):
    limits = client.models.retrieve("cold").model_extra["vlm_gateway"]["images"]
    assert limits["max_images"] == 8 and limits["max_image_bytes"] == 20 * 1024 * 1024
