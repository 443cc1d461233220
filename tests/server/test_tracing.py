"""Tracing: the app in-process (its lifespan, httpx.ASGITransport, the official SDK) in front of
the fake upstream, with tracing on and the SDK's in-memory exporter in place of the configured
one. A chat request with an image gives a request span with two children (image resolution and
the backend call), and the upstream gets a traceparent naming the backend call. Off: no spans,
no header, and the OpenTelemetry SDK (the `otel` extra) is not needed: only the API package,
which FastAPI itself requires."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.images import image_message, png_bytes, png_data_url
from tests.support.polling import until
from tests.support.processes import REPO
from tests.support.settings import DEAD_UPSTREAM
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.server.app import create_app
from vlm_gateway.server.state import state_of

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
PNG = png_bytes(30, 30)


def settings(upstream: Any, tmp_path: Any, tracing: bool, **section: Any) -> Any:
    """Model `m` with two replicas: the first never ready, so requests go to replica 1. Model
    `drop`: its upstream cuts every stream short after the first event."""
    replica = {"name": "m", "backend": "openai", "upstream_model": "ok"}
    drop = {"name": "drop", "backend": "openai", "upstream_model": "fault-drop"}
    return settings_model().model_validate(
        {
            "data_dir": str(tmp_path),
            "tracing": {"enabled": tracing, **section},
            "models": [
                replica | {"base_url": DEAD_UPSTREAM},
                replica | {"base_url": upstream.base_url},
                drop | {"base_url": upstream.base_url},
            ],
        }
    )


@contextlib.asynccontextmanager
async def sdk_client(settings: Any, exporter: InMemorySpanExporter) -> AsyncIterator[Any]:
    """The SDK against the app in this process. Spans are read after this exits: the app's
    lifespan then shuts its tracer down, which flushes them to the exporter."""
    app = create_app(settings, span_exporter=exporter)
    async with app.router.lifespan_context(app):
        registry = state_of(app).registry
        ready = [registry.replicas("m")[1], registry.replicas("drop")[0]]
        await until(lambda: all(b.status.ready for b in ready), "the fake's models ready")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield openai.AsyncOpenAI(
                base_url="http://gateway/v1", api_key="x", http_client=http, max_retries=0
            )


def chat(client: Any, model: str = "m", **extra: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=[image_message("what is it?", png_data_url(30, 30))], **extra
    )


def spans_by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    spans = exporter.get_finished_spans()
    by_name = {span.name: span for span in spans}
    assert len(by_name) == len(spans), [span.name for span in spans]
    return by_name


def test_a_chat_with_an_image_makes_three_linked_spans(upstream, tmp_path):
    exporter = InMemorySpanExporter()
    upstream.clear()

    async def run() -> None:
        async with sdk_client(settings(upstream, tmp_path, tracing=True), exporter) as client:
            caller = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
            reply = await chat(client, extra_headers=caller)
            assert reply.choices[0].message.content

    asyncio.run(run())
    spans = spans_by_name(exporter)
    assert sorted(spans) == ["POST /v1/chat/completions", "backend.call", "images.resolve"]
    request, images, call = (
        spans["POST /v1/chat/completions"],
        spans["images.resolve"],
        spans["backend.call"],
    )
    # The gateway continues the caller's trace; its two steps are children of the request.
    assert format(request.context.trace_id, "032x") == CALLER_TRACE
    assert format(request.parent.span_id, "016x") == CALLER_SPAN
    assert images.parent.span_id == call.parent.span_id == request.context.span_id
    assert request.kind is SpanKind.SERVER and call.kind is SpanKind.CLIENT
    assert request.attributes["http.route"] == "/v1/chat/completions"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["gen_ai.request.model"] == "m"
    assert request.attributes["vlm_gateway.request_id"].startswith("req_")
    assert dict(images.attributes) == {
        "vlm_gateway.images.count": 1,
        "vlm_gateway.images.bytes": len(PNG),
    }
    assert dict(call.attributes) == {
        "gen_ai.request.model": "m",
        "vlm_gateway.backend.kind": "openai",
        "vlm_gateway.backend.replica": 1,
    }
    # The upstream's own spans would hang under the backend call.
    traceparent = upstream.request_headers[-1]["traceparent"]
    assert traceparent == f"00-{CALLER_TRACE}-{call.context.span_id:016x}-01"


def test_a_stream_span_lasts_as_long_as_the_stream(upstream, tmp_path):
    """Its outcome is the stream's: one cut short after the 200 is an error on the span."""
    exporter = InMemorySpanExporter()
    upstream.clear()

    async def run() -> list[Any]:
        async with sdk_client(settings(upstream, tmp_path, tracing=True), exporter) as client:
            chunks = [chunk async for chunk in await chat(client, stream=True)]
            with pytest.raises(openai.APIError, match="upstream for .drop. failed"):
                async for _ in await chat(client, model="drop", stream=True):
                    pass
            return chunks

    chunks = asyncio.run(run())
    requests = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    calls = [s for s in exporter.get_finished_spans() if s.name == "backend.call"]
    assert chunks and len(requests) == len(calls) == 2
    for request, call in zip(requests, calls, strict=True):
        assert call.parent.span_id == request.context.span_id
        assert call.attributes["vlm_gateway.stream"] is True
    (whole, cut) = calls
    assert whole.status.status_code is StatusCode.UNSET
    assert cut.status.status_code is StatusCode.ERROR
    assert "upstream for 'drop' failed" in cut.status.description
    traceparent = upstream.request_headers[0]["traceparent"]
    assert traceparent.split("-")[2] == format(whole.context.span_id, "016x")


def test_a_refused_image_marks_the_image_span_and_calls_no_backend(upstream, tmp_path):
    exporter = InMemorySpanExporter()
    upstream.clear()

    async def run() -> None:
        async with sdk_client(settings(upstream, tmp_path, tracing=True), exporter) as client:
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(
                    model="m", messages=[image_message(None, "data:image/png;base64,bm90IGFu")]
                )

    asyncio.run(run())
    spans = spans_by_name(exporter)
    assert sorted(spans) == ["POST /v1/chat/completions", "images.resolve"]
    assert spans["images.resolve"].status.status_code is StatusCode.ERROR
    assert spans["POST /v1/chat/completions"].attributes["http.response.status_code"] == 400
    assert upstream.requests == []


def test_off_no_spans_and_no_traceparent(upstream, tmp_path):
    exporter = InMemorySpanExporter()
    upstream.clear()

    async def run() -> None:
        async with sdk_client(settings(upstream, tmp_path, tracing=False), exporter) as client:
            await chat(client)

    asyncio.run(run())
    assert exporter.get_finished_spans() == ()
    assert len(upstream.requests) == 1 and "traceparent" not in upstream.request_headers[0]


def test_sample_ratio_0_keeps_only_the_traces_a_caller_sampled(upstream, tmp_path):
    exporter = InMemorySpanExporter()
    upstream.clear()

    async def run() -> None:
        tracing = settings(upstream, tmp_path, tracing=True, sample_ratio=0)
        async with sdk_client(tracing, exporter) as client:
            await chat(client)
            await chat(client, extra_headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})

    asyncio.run(run())
    spans = exporter.get_finished_spans()
    assert {format(span.context.trace_id, "032x") for span in spans} == {CALLER_TRACE}
    assert len(spans) == 3
    # The unsampled request still passes its trace on, marked not sampled (flag bit 0 clear).
    unsampled, sampled = (headers["traceparent"] for headers in upstream.request_headers)
    assert int(unsampled[-2:], 16) & 1 == 0 and int(sampled[-2:], 16) & 1 == 1
    assert sampled.startswith(f"00-{CALLER_TRACE}-")


NO_OTEL = """
import asyncio, sys
for name in ("opentelemetry.sdk", "opentelemetry.exporter"):
    sys.modules[name] = None  # importing them fails, as where the otel extra is not installed

import httpx
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.server.app import create_app

settings = settings_model().model_validate({
    "data_dir": sys.argv[1],
    "models": [{"name": "m", "backend": "openai", "base_url": sys.argv[2], "upstream_model": "ok"}],
})
app = create_app(settings)

async def main():
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            for _ in range(1000):
                reply = await client.post("/v1/chat/completions", json={
                    "model": "m", "messages": [{"role": "user", "content": "hi"}]})
                if reply.status_code != 503:  # 503 until the upstream probe has answered
                    break
                await asyncio.sleep(0.01)
            print(reply.status_code)

asyncio.run(main())
sdk = ("opentelemetry.sdk.", "opentelemetry.exporter.")
print(sorted(m for m, mod in sys.modules.items() if m.startswith(sdk) and mod))
"""


def test_off_runs_without_the_otel_extra(upstream, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NO_OTEL), str(tmp_path), upstream.base_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "[]"]
