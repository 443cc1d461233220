"""Typed access to what the app factory builds for one app: routes call
`gateway_state(request)`, never `request.app.state.<name>`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from vlm_gateway.backends.ondemand.manager import OnDemandLoader
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.metrics import Metrics
from vlm_gateway.media.resolve import RequestResolver
from vlm_gateway.server.batch.runner import BatchRunner
from vlm_gateway.server.batch.store_base import BatchStore
from vlm_gateway.server.tracing import Tracer


@dataclass(frozen=True)
class GatewayState:
    settings: GatewaySettings
    started_at: int  # unix time: `created` of every model card
    registry: BackendRegistry
    loader: OnDemandLoader  # requests pick their replica here: on-demand models load first
    resolver: RequestResolver  # images, video and audio (media/resolve.py)
    batch_store: BatchStore
    batch_runner: BatchRunner
    metrics: Metrics
    tracer: Tracer = field(default_factory=Tracer)  # a no-op one unless tracing is on


def state_of(app: Any) -> GatewayState:
    """The app's state once its lifespan has started (before that there is none)."""
    state = getattr(app.state, "gateway", None)
    if not isinstance(state, GatewayState):
        raise RuntimeError("the gateway app is not started: run it under its lifespan")
    return state


def gateway_state(request: Request) -> GatewayState:
    return state_of(request.app)
