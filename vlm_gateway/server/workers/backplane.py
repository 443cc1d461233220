"""The supervisor's internal app (the backplane): the gateway app on 127.0.0.1 that runs the
models the gateway runs itself, plus what workers ask of it.

- `/backplane/m<i>/v1/...`: model number i as an OpenAI upstream of its own. Requests are the
  gateway's own `/v1/...` routes (the path is rewritten); `GET .../v1/models` lists the model
  only while one of its replicas is ready (or, for `load: on_demand`, may be loaded for a
  request), and answers 503 with the reason otherwise, which is how each worker's readiness
  probe learns the supervisor's view. Requests for an on-demand model wait here for its load.
- `GET /backplane/live-metrics`: the live state only the supervisor knows (replica states,
  requests in flight at its backends, batches, vLLM's own series) for workers' /metrics.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

from vlm_gateway.backends.registry import SERVES_ON_REQUEST
from vlm_gateway.core.errors import GatewayError
from vlm_gateway.core.metrics import CONTENT_TYPE, CollectorChain
from vlm_gateway.server.extension import AppExtension
from vlm_gateway.server.route_helpers import json_response
from vlm_gateway.server.scrape import live_collectors
from vlm_gateway.server.state import gateway_state
from vlm_gateway.server.workers.plan import BACKPLANE_PREFIX

LIVE_METRICS_PATH = f"{BACKPLANE_PREFIX}/live-metrics"
_READY_PATH = f"{BACKPLANE_PREFIX}/ready"
_MODEL_PATH = re.compile(rf"^{BACKPLANE_PREFIX}/m(\d+)(/v1/.*)$")
# Counted by the supervisor alone (the batch runner and loading on demand run there): workers
# show its counts.
_SUPERVISOR_COUNTERS = (
    "vlmgw_batch_requests",
    "vlmgw_model_loads",
    "vlmgw_model_load_seconds",
    "vlmgw_model_unloads",
    "vlmgw_load_queue_wait_seconds",
    "vlmgw_load_queue_refusals",
)


def backplane_extension() -> AppExtension:
    def install(app: FastAPI) -> None:
        app.include_router(_router())
        app.add_middleware(_ModelPaths)

    return AppExtension(install)


class _ModelPaths:
    """`/backplane/m<i>/v1/<rest>` -> `/v1/<rest>`; its `/v1/models` -> model i's readiness."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            matched = _MODEL_PATH.match(scope["path"])
            if matched:
                index, rest = matched.groups()
                path = f"{_READY_PATH}/{index}" if rest == "/v1/models" else rest
                scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


def _router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(_READY_PATH + "/{index}")
    async def model_ready(index: int, request: Request) -> Response:
        state = gateway_state(request)
        names = state.settings.model_names()
        if not 0 <= index < len(names):
            raise GatewayError(f"No model number {index}.", status_code=404)
        replicas = state.registry.replicas(names[index])
        # A model loaded on demand serves workers' requests while unloaded: they wait here.
        if any(backend.status.state in SERVES_ON_REQUEST for backend in replicas):
            return json_response({"object": "list", "data": [{"id": names[index]}]})
        reasons = "; ".join(
            f"replica {i}: {b.status.state.value} ({b.status.reason or 'no reason given'})"
            for i, b in enumerate(replicas)
        )
        raise GatewayError(
            f"Model '{names[index]}' is not ready: {reasons}.",
            status_code=503,
            code="model_not_ready",
        )

    @router.get(LIVE_METRICS_PATH)
    async def live_metrics(request: Request) -> Response:
        state = gateway_state(request)
        collectors: list[Collector] = [*await live_collectors(state)]
        collectors.append(_Only(state.metrics.registry, _SUPERVISOR_COUNTERS))
        text = await asyncio.to_thread(generate_latest, CollectorChain(collectors))
        return Response(text, media_type=CONTENT_TYPE)

    return router


class _Only:
    """The families of `source` with the given names."""

    def __init__(self, source: Collector, names: tuple[str, ...]) -> None:
        self._source = source
        self._names = names

    def collect(self) -> Iterator[Metric]:
        return (family for family in self._source.collect() if family.name in self._names)
