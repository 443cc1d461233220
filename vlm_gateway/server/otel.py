"""Tracing with the OpenTelemetry SDK: the only module that imports it, and only when
`tracing.enabled` (vlm_gateway/server/tracing.py says what the spans are).

No global OpenTelemetry state of ours: the provider and its exporter are held by the app's
tracer and handed to FastAPI for the request span, so two apps in one process (tests, in-process
`caption`) each trace on their own, and the process-wide provider stays whatever an embedding
program set. What the API itself keeps globally is used as is: the context variable that holds
the current span (asyncio copies it into every task a request starts) and the propagator, which
FastAPI reads the caller's `traceparent` with and we write the upstream's with (W3C trace
context and baggage unless OTEL_PROPAGATORS says otherwise).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from typing import Any, TypeVar

from fastapi.telemetry import TelemetryConfig
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

from vlm_gateway.backends.base import Backend
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.tracing import TracingSettings
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.core.request_context import current_request_id, upstream_headers
from vlm_gateway.images.resolve import image_parts
from vlm_gateway.server.tracing import BackendCall, Tracer

T = TypeVar("T")
Attributes = dict[str, AttributeValue]


class OTelTracer(Tracer):
    def __init__(self, settings: TracingSettings, exporter: SpanExporter | None = None) -> None:
        super().__init__()
        # shutdown_on_exit=False: the app's lifespan shuts it down; an atexit hook per app
        # would keep every app of a test session alive.
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            shutdown_on_exit=False,
        )
        self._provider.add_span_processor(BatchSpanProcessor(exporter or _exporter(settings)))
        self.tracer = self._provider.get_tracer("vlm_gateway")

    def fastapi_telemetry(self) -> TelemetryConfig:
        """FastAPI's own server span is the request's: around every middleware, continuing a
        caller's trace, named `POST /v1/chat/completions` after the matched route, with the
        status. Without its operation spans, so ours are direct children of it."""
        return {
            "tracer_provider": self._provider,
            "tracing": True,
            "operation_spans": False,
            "metrics": False,  # /metrics has the gateway's own
            "logs": False,
            "auto_configure": False,
        }

    def annotate_request(self, model: str) -> None:
        span = trace.get_current_span()  # the request's: routes run in FastAPI's span
        span.set_attribute("gen_ai.request.model", model)
        request_id = current_request_id()
        if request_id is not None:
            span.set_attribute("vlm_gateway.request_id", request_id)

    @contextlib.contextmanager
    def resolving_images(self, request: ChatCompletionRequest) -> Iterator[None]:
        parts = image_parts(request)
        if not parts:
            yield  # nothing to resolve: no span
            return
        attributes: Attributes = {"vlm_gateway.images.count": len(parts)}
        with self.tracer.start_as_current_span("images.resolve", attributes=attributes) as span:
            yield
            # After resolution every part is a checked data URL: its size needs no decoding.
            size = sum(data_url_bytes(part.image_url.url) for _, part in parts)
            span.set_attribute("vlm_gateway.images.bytes", size)

    def backend_call(self, backend: Backend, registry: BackendRegistry) -> BackendCall:
        return OTelBackendCall(
            self.tracer,
            {
                "gen_ai.request.model": backend.name,
                "vlm_gateway.backend.kind": backend.kind,
                # The replica's place among the model's replicas, as /ready lists them.
                "vlm_gateway.backend.replica": registry.replicas(backend.name).index(backend),
            },
        )

    def shutdown(self) -> None:
        self._provider.shutdown()


def _exporter(settings: TracingSettings) -> SpanExporter:
    if settings.exporter == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=settings.endpoint)


def data_url_bytes(url: str) -> int:
    """The decoded size of a base64 data URL, from its length and padding."""
    payload = url.partition(",")[2]
    return len(payload) * 3 // 4 - (len(payload) - len(payload.rstrip("=")))


class OTelBackendCall(BackendCall):
    def __init__(self, tracer: trace.Tracer, attributes: Attributes) -> None:
        self._tracer = tracer
        self._attributes = attributes

    def call(self, call: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        return self._traced(call)

    async def _traced(self, call: Coroutine[Any, Any, T]) -> T:
        with (
            self._tracer.start_as_current_span(
                "backend.call", kind=SpanKind.CLIENT, attributes=self._attributes
            ),
            upstream_headers(_traceparent()),
        ):
            return await call

    def stream(self, opening: Awaitable[AsyncIterator[bytes]]) -> Awaitable[AsyncIterator[bytes]]:
        return self._open(opening)

    async def _open(self, opening: Awaitable[AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
        """The span is current while the stream opens (the upstream request is made then) and
        ends with the stream: the relay ends it, since it outlives this call."""
        attributes = self._attributes | {"vlm_gateway.stream": True}
        span = self._tracer.start_span("backend.call", kind=SpanKind.CLIENT, attributes=attributes)
        try:
            with trace.use_span(span, end_on_exit=False), upstream_headers(_traceparent()):
                events = await opening
        except BaseException:
            span.end()
            raise
        return _relay(span, events)


def _traceparent() -> dict[str, str]:
    """The current span's context as W3C headers, for the upstream request."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


async def _relay(span: trace.Span, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield event
    except Exception as exc:  # the stream failed after it began: the caller sends an error event
        span.record_exception(exc)
        span.set_status(StatusCode.ERROR, str(exc))
        raise
    finally:
        # A client that leaves closes the relay early (GeneratorExit): not an error of ours.
        span.end()
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
