"""Request ids end to end: a real gateway process in front of the fake upstream, driven by the
official SDK. The id comes back on every response (JSON, errors, the door's refusals, streams),
reaches the upstream, and tags the gateway's log lines about the request."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess
from tests.support.settings import upstream_entry
from vlm_gateway.backends.base import Backend, State
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.config.loading import load_settings
from vlm_gateway.core.logs import RequestContextFilter
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.server.app import create_app
from vlm_gateway.server.door.door import Door

KEY = "sk-request-ids-0123456789"
HI = [{"role": "user", "content": "hi"}]
MAX_BODY = 4096
GENERATED = re.compile(r"req_[0-9a-f]{32}")
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    work = tmp_path_factory.mktemp("request-ids")

    def model(name: str, upstream_model: str) -> dict:
        return upstream_entry(name, upstream.base_url, upstream_model)

    config = {
        "data_dir": str(work / "data"),
        "security": {"api_keys": [KEY], "max_body_bytes": MAX_BODY},
        "models": [model("m", "ok"), model("bad", "fault-400"), model("broken", "fault-500")],
    }
    with GatewayProcess(config, work) as gw:
        yield gw


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)


def with_id(request_id: str) -> dict:
    return {"extra_headers": {"X-Request-Id": request_id}}


def upstream_ids(upstream: FakeUpstream) -> list[str | None]:
    return [headers.get("x-request-id") for headers in list(upstream.request_headers)]


def log_lines_with(gateway: GatewayProcess, request_id: str, text: str) -> list[str]:
    return [
        line for line in gateway.log().splitlines() if f"[{request_id}]" in line and text in line
    ]


def access_line(gateway: GatewayProcess, request_id: str, request: str) -> str:
    """The access line for one request: written when the response has ended, so wait for it."""
    lines = wait_until(
        lambda: log_lines_with(gateway, request_id, f"vlm_gateway.access [{request_id}]"),
        f"the access line of {request_id}",
    )
    assert len(lines) == 1 and f'"{request}"' in lines[0], lines
    assert re.match(TIMESTAMP + " INFO vlm_gateway.access ", lines[0]), lines[0]
    return lines[0]


def test_a_given_id_comes_back_on_a_json_answer_reaches_the_upstream_and_the_log(
    gateway, upstream, client
):
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=HI, **with_id("client-id.json-1")
    )
    assert raw.headers["x-request-id"] == "client-id.json-1"
    assert raw.parse().choices[0].message.content == "hello"
    assert "client-id.json-1" in upstream_ids(upstream)
    line = access_line(gateway, "client-id.json-1", "POST /v1/chat/completions")
    usage = "prompt_tokens=5 completion_tokens=1"  # the fake upstream's usage
    assert re.search(r'" 200 \d+\.\d ms key=key-[0-9a-f]{12} model=m ' + usage + "$", line), line


def test_a_stream_carries_the_id_and_the_upstream_saw_it(gateway, upstream, client):
    with client.chat.completions.with_streaming_response.create(
        model="m", messages=HI, stream=True, **with_id("client-id:stream")
    ) as response:
        assert response.headers["x-request-id"] == "client-id:stream"
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert "client-id:stream" in upstream_ids(upstream)
    access_line(gateway, "client-id:stream", "POST /v1/chat/completions")


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [
        ("nope", openai.NotFoundError, 404),  # the gateway's own: model_not_found
        ("bad", openai.BadRequestError, 400),  # the upstream's 400, passed on
        ("broken", openai.InternalServerError, 502),  # the upstream's 500
    ],
)
def test_errors_carry_the_id(gateway, client, model, error, status):
    request_id = f"client-error-{status}"
    with pytest.raises(error) as caught:
        client.chat.completions.create(model=model, messages=HI, **with_id(request_id))
    assert caught.value.status_code == status
    assert caught.value.request_id == request_id  # the SDK reads it from X-Request-Id
    line = access_line(gateway, request_id, "POST /v1/chat/completions")
    assert f'" {status} ' in line and line.endswith(f"model={model}")


def test_the_doors_refusals_carry_the_id(gateway, client):
    nobody = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        nobody.models.list(**with_id("client-refused-401"))
    assert caught.value.request_id == "client-refused-401"
    # The door's own log line about the refusal is tagged too, not only the access line.
    assert log_lines_with(gateway, "client-refused-401", "refused GET /v1/models: invalid API key")
    access_line(gateway, "client-refused-401", "GET /v1/models")

    too_big = httpx.post(
        gateway.url + "/v1/chat/completions",
        content=b"x" * (MAX_BODY + 1),
        headers={"authorization": f"Bearer {KEY}", "x-request-id": "client-refused-413"},
    )
    assert too_big.status_code == 413
    assert too_big.headers["x-request-id"] == "client-refused-413"


def test_without_an_id_the_gateway_makes_one_and_forwards_it(gateway, upstream, client):
    first = client.chat.completions.with_raw_response.create(model="m", messages=HI)
    second = client.chat.completions.with_raw_response.create(model="m", messages=HI)
    made = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(GENERATED.fullmatch(request_id) for request_id in made), made
    assert made[0] != made[1]
    assert set(made) <= set(upstream_ids(upstream))
    access_line(gateway, made[0], "POST /v1/chat/completions")


@pytest.mark.parametrize("unusable", ["two words", "x" * 129, 'quote"d', "semi;colon", "caf\u00e9"])
def test_an_unusable_id_is_replaced_and_never_repeated(gateway, upstream, unusable):
    response = httpx.get(
        gateway.url + "/v1/models",
        headers={"authorization": f"Bearer {KEY}", "x-request-id": unusable.encode()},
    )
    assert response.status_code == 200
    assert GENERATED.fullmatch(response.headers["x-request-id"])
    access_line(gateway, response.headers["x-request-id"], "GET /v1/models")
    assert unusable not in gateway.log()


# -- in this process: the middleware alone, and the app's last-resort 500 ------------------


async def answer_with_own_id(scope, receive, send) -> None:
    headers = [(b"content-type", b"text/plain"), (b"x-request-id", b"inner")]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": b"done"})


async def crash(scope, receive, send) -> None:
    raise RuntimeError("boom")


def call(app, headers: dict | None = None) -> httpx.Response:
    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.get("/thing?x=1", headers=headers)

    return asyncio.run(scenario())


def access_records(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "vlm_gateway.access"]


def test_the_middleware_owns_the_header_and_writes_one_access_line(caplog):
    caplog.set_level(logging.INFO, "vlm_gateway.access")
    response = call(Door(answer_with_own_id), {"x-request-id": "outer-1"})
    assert response.status_code == 201
    assert response.headers.get_list("x-request-id") == ["outer-1"]
    [record] = access_records(caplog)
    assert (record.request_id, record.status, record.method) == ("outer-1", 201, "GET")
    assert record.path == "/thing?x=1" and record.duration_ms >= 0


def test_access_log_off_writes_no_access_line_but_keeps_the_header(caplog):
    caplog.set_level(logging.INFO, "vlm_gateway.access")
    response = call(Door(answer_with_own_id, access_log=False))
    assert GENERATED.fullmatch(response.headers["x-request-id"])
    assert access_records(caplog) == []


def test_an_app_that_raises_is_logged_as_500(caplog):
    caplog.set_level(logging.INFO, "vlm_gateway.access")
    call(Door(crash), {"x-request-id": "crash-1"})
    [record] = access_records(caplog)
    assert (record.request_id, record.status) == ("crash-1", 500)


class CrashingBackend(Backend):
    kind = "crashing"

    async def start(self) -> None:
        self.set_status(State.READY)

    async def chat(self, request: ChatCompletionRequest) -> dict[str, Any]:
        raise RuntimeError("a bug")

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[bytes]:
        raise RuntimeError("a bug")


def test_an_unexpected_error_500_carries_the_id_and_its_log_line_too(tmp_path, caplog):
    settings = load_settings(settings_model(), None, {"data_dir": str(tmp_path)}, environ={})
    app = create_app(settings, build=lambda _settings, _client: [CrashingBackend("m")])
    caplog.handler.addFilter(RequestContextFilter())

    async def scenario() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                return await http.post(
                    "/v1/chat/completions",
                    json={"model": "m", "messages": HI},
                    headers={"x-request-id": "bug-1"},
                )

    response = asyncio.run(scenario())
    assert response.status_code == 500 and response.json()["error"]["type"]
    assert response.headers["x-request-id"] == "bug-1"
    [logged] = [record for record in caplog.records if record.getMessage() == "unhandled error"]
    assert logged.request_id == "bug-1"
