"""The request-metrics middleware, in process: every request is counted by route template and
status, refusals at the door by reason, and labels stay bounded (templates, not raw paths)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.settings import DEAD_UPSTREAM
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.server.app import create_app

KEY_BODY, KEY_RATE = "sk-metrics-body-0123456789", "sk-metrics-rate-0123456789"
MAX_BODY = 2048
RATE = 5  # requests per minute for each key: the sixth in a row is refused
CHAT = "/v1/chat/completions"


@contextlib.asynccontextmanager
async def gateway(tmp_path) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_model().model_validate(
        {
            "data_dir": str(tmp_path),
            "security": {
                "api_keys": [KEY_BODY, KEY_RATE],
                "max_body_bytes": MAX_BODY,
                "requests_per_minute": RATE,
            },
            "models": [{"name": "m", "backend": "openai", "base_url": DEAD_UPSTREAM}],
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


def counts(text: str, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """{(label values...): value} for every sample called `name`."""
    return {
        tuple(sample.labels[label] for label in labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def chunks(size: int) -> AsyncIterator[bytes]:
    """A body with no Content-Length: the cap can only count it as it arrives."""
    for _ in range(size // 512):
        yield b"x" * 512


async def send_traffic(client: httpx.AsyncClient) -> None:
    assert (await client.post(CHAT, json={})).status_code == 401
    assert (await client.post(CHAT, json={}, headers=auth("sk-wrong"))).status_code == 401
    declared = await client.post(CHAT, content=b"x" * (MAX_BODY * 2), headers=auth(KEY_BODY))
    assert declared.status_code == 413
    chunked = await client.post(CHAT, content=chunks(MAX_BODY * 2), headers=auth(KEY_BODY))
    assert chunked.status_code == 413
    for _ in range(RATE):
        assert (await client.get("/v1/models", headers=auth(KEY_RATE))).status_code == 200
    assert (await client.get("/v1/models", headers=auth(KEY_RATE))).status_code == 429
    assert (await client.get("/v1/files/file-abc", headers=auth(KEY_BODY))).status_code == 404
    assert (await client.get("/v1/files/file-xyz", headers=auth(KEY_BODY))).status_code == 404
    assert (await client.get("/no/such/path", headers=auth(KEY_BODY))).status_code == 404


def test_requests_by_route_template_and_refusals_by_reason(tmp_path):
    async def scenario() -> str:
        async with gateway(tmp_path) as client:
            await send_traffic(client)
            response = await client.get("/metrics")  # public: no key
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            return response.text

    text = asyncio.run(scenario())
    assert counts(text, "vlmgw_refusals_total", "reason", "model") == {
        ("auth", ""): 2,
        ("body_size", ""): 2,
        ("rate_limit", ""): 1,
    }
    requests = counts(text, "vlmgw_requests_total", "route", "method", "status")
    assert {key: value for key, value in requests.items() if key[0] != "/metrics"} == {
        (CHAT, "POST", "401"): 2,  # refused before routing: the template is matched for them
        (CHAT, "POST", "413"): 2,  # one refused at the door, one mid-body inside the route
        ("/v1/models", "GET", "200"): RATE,
        ("/v1/models", "GET", "429"): 1,
        ("/v1/files/{file_id}", "GET", "404"): 2,  # the template, never the raw path
        ("unmatched", "GET", "404"): 1,
    }
    durations = counts(text, "vlmgw_request_duration_seconds_count", "route", "method")
    assert durations[("/v1/models", "GET")] == RATE + 1
