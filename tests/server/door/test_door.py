"""The door as one layer, in process: every answer (a route's, a refusal's) carries the request
id and a Server-Timing header whose parts say what the request spent where."""

from __future__ import annotations

import asyncio
import re

import httpx

from vlm_gateway.config.security import SecuritySettings
from vlm_gateway.server.door.auth import KeyCheck
from vlm_gateway.server.door.door import Door
from vlm_gateway.server.door.keys import KeyRing
from vlm_gateway.server.door.request_metrics import request_tracker

KEY = "sk-door-0123456789"
PART = re.compile(r"(\w+);dur=(\d+\.\d{3})")


def timings(response: httpx.Response) -> dict[str, float]:
    """{"gateway": ms, ...} from the Server-Timing header."""
    header = response.headers["server-timing"]
    parts = dict((name, float(ms)) for name, ms in PART.findall(header))
    assert ", ".join(f"{name};dur={ms:.3f}" for name, ms in parts.items()) == header
    return parts


async def upstream_took_250_ms(scope, receive, send) -> None:
    """An app that says its backend took 250 ms and its images 40 ms (without waiting)."""
    tracker = request_tracker(scope)
    tracker.backend_s += 0.25
    tracker.images_s += 0.04
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def no_backend(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def call(app, headers: dict | None = None) -> httpx.Response:
    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.get("/v1/models", headers=headers)

    return asyncio.run(scenario())


def test_server_timing_names_the_upstream_and_image_time_apart_from_the_gateways():
    parts = timings(call(Door(upstream_took_250_ms)))
    assert list(parts) == ["gateway", "upstream", "images"]
    assert parts["upstream"] == 250.0 and parts["images"] == 40.0
    assert parts["gateway"] >= 0.0  # the time the door saw, less the upstream's


def test_a_request_that_called_no_backend_has_only_the_gateways_time():
    assert list(timings(call(Door(no_backend)))) == ["gateway"]


def test_server_timing_off_leaves_the_header_out_but_keeps_the_id():
    response = call(Door(upstream_took_250_ms, server_timing=False))
    assert "server-timing" not in response.headers
    assert response.headers["x-request-id"].startswith("req_")


def test_a_refusal_at_the_door_carries_the_id_and_the_timing_too():
    keys = KeyCheck(KeyRing.from_settings(SecuritySettings(api_keys=[KEY])), public_paths=())
    refused = call(Door(no_backend, keys=keys))
    assert refused.status_code == 401
    assert refused.headers["x-request-id"].startswith("req_")
    assert list(timings(refused)) == ["gateway"]
    assert call(Door(no_backend, keys=keys), {"authorization": f"Bearer {KEY}"}).status_code == 204
