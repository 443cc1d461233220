"""The app's tracer: one object per app, built from `tracing:` and handed down in GatewayState.

`Tracer` itself traces nothing: it is what every app holds unless `tracing.enabled`, and each
hook hands back what it was given, so an untraced request pays a few method calls. OpenTelemetry
is imported only by `build_tracer` when tracing is on (vlm_gateway/server/otel.py), so the
gateway runs without the `otel` extra installed.

The three spans of a chat request: the request (FastAPI's own server span: route, status; we add
the model and the request id), `images.resolve` (count and bytes) and `backend.call` (model,
backend kind, replica), the last two children of the first. The trace context goes to upstreams
as a W3C `traceparent` header, set for the backend call only (core/request_context.py's
`upstream_headers`): health probes and image hosts learn nothing of our traces.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Coroutine
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi.telemetry import TelemetryConfig

from vlm_gateway.backends.base import Backend
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.tracing import TracingSettings
from vlm_gateway.core.protocol import ChatCompletionRequest

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

T = TypeVar("T")


class BackendCall:
    """One call to one replica: `call` wraps a JSON answer, `stream` the opening of a stream."""

    def call(self, call: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        return call

    def stream(self, opening: Awaitable[AsyncIterator[bytes]]) -> Awaitable[AsyncIterator[bytes]]:
        return opening


class Tracer:
    """No tracing (see the module docstring); OTelTracer overrides every hook."""

    def __init__(self) -> None:
        self._untraced_call = BackendCall()

    def fastapi_telemetry(self) -> TelemetryConfig:
        """FastAPI's own telemetry (`FastAPI(telemetry=...)`): off, also when an embedding
        program has set a global OpenTelemetry provider."""
        return {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}

    def annotate_request(self, model: str) -> None:
        """The model the request names, on the request's span."""

    def resolving_images(self, request: ChatCompletionRequest) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def backend_call(self, backend: Backend, registry: BackendRegistry) -> BackendCall:
        return self._untraced_call

    def shutdown(self) -> None:
        """Export what is still buffered; blocking (call it in a thread)."""


def build_tracer(settings: TracingSettings, exporter: SpanExporter | None = None) -> Tracer:
    """`exporter` replaces the configured one (the tests' in-memory exporter)."""
    if not settings.enabled:
        return Tracer()
    from vlm_gateway.server.otel import OTelTracer

    return OTelTracer(settings, exporter)
