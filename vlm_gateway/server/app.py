"""The app factory: everything is built here from typed settings and handed to the routes as
one typed `GatewayState` (vlm_gateway/server/state.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import aiohttp
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from vlm_gateway.backends.base import Backend
from vlm_gateway.backends.ejection import OutlierEjector
from vlm_gateway.backends.kinds import build_backends
from vlm_gateway.backends.ondemand.manager import OnDemandLoader
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.backends.retry_budget import RetryBudgets
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.errors import GatewayError, InvalidRequestError, NotFoundError
from vlm_gateway.core.metrics import Metrics
from vlm_gateway.core.request_context import REQUEST_ID_HEADER, RequestContext, bound_request
from vlm_gateway.server.anthropic import router as anthropic_messages
from vlm_gateway.server.api_docs import install_api_docs
from vlm_gateway.server.batch.open_store import build_store
from vlm_gateway.server.batch.runner import BatchRunner
from vlm_gateway.server.door.door import REQUEST_CONTEXT_SCOPE
from vlm_gateway.server.door.install import install_door, open_request_resolver
from vlm_gateway.server.door.keys import KeyRing
from vlm_gateway.server.error_shapes import error_reply
from vlm_gateway.server.extension import AppExtension
from vlm_gateway.server.fast_routes import FastRoutesMiddleware, hot_routes
from vlm_gateway.server.openapi import DocumentedApp
from vlm_gateway.server.responses import router as responses
from vlm_gateway.server.route_helpers import json_response
from vlm_gateway.server.routes import batches, chat, completions, files, health, metrics, models
from vlm_gateway.server.startup import startup_summary
from vlm_gateway.server.state import GatewayState
from vlm_gateway.server.tracing import Tracer, build_tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

BackendBuilder = Callable[[GatewaySettings, aiohttp.ClientSession], list[Backend]]


def create_app(
    settings: GatewaySettings,
    build: BackendBuilder = build_backends,
    *,
    span_exporter: SpanExporter | None = None,  # replaces the configured one (tests)
    extension: AppExtension | None = None,  # a worker's or the supervisor's extras
) -> FastAPI:
    started_at = int(time.time())
    tracer = build_tracer(settings.tracing, span_exporter)  # a no-op one unless enabled
    app_metrics = Metrics.from_environment(settings.model_names())  # this app's own registry

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _running(settings, build, app_metrics, tracer, started_at) as state:
            app.state.gateway = state
            yield

    # /docs (with its assets) and /openapi.json: on unless `api_docs: false`; then all are a 404
    # envelope. They follow the API-key rule of every non-public path (security.public_paths).
    app = DocumentedApp(
        title="vlm-gateway",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN: server/api_docs.py's does not
        redoc_url=None,
        openapi_url="/openapi.json" if settings.api_docs else None,
        # The request span, around every middleware (refusals at the door get one too).
        telemetry=tracer.fastapi_telemetry(),
    )
    for module in (chat, completions, models, health, files, batches, metrics):
        app.include_router(module.router)
    for module in (responses, anthropic_messages):  # translated onto the chat call
        app.include_router(module.router)
    if settings.api_docs:
        install_api_docs(app, openapi_url="/openapi.json")
    _install_error_handlers(app)
    # Added first, so innermost (inside the door): chat and completions skip FastAPI's router.
    app.add_middleware(FastRoutesMiddleware, routes=hot_routes(app.routes))
    if extension is not None:  # `serve --workers N` (vlm_gateway/server/workers/)
        extension.install(app)
    # Added last, so outermost: ids, metrics, keys, limits, the access line (server/door/).
    install_door(app, settings, app_metrics, extension.shared_usage if extension else None)
    return app


@contextlib.asynccontextmanager
async def _running(
    settings: GatewaySettings,
    build: BackendBuilder,
    app_metrics: Metrics,
    tracer: Tracer,
    started_at: int,
) -> AsyncIterator[GatewayState]:
    """Everything one app runs, started in order and stopped in reverse."""
    async with (
        upstream_session(settings) as client,
        open_request_resolver(settings, app_metrics) as resolver,
    ):
        ejector = OutlierEjector(settings.eject_after, observer=app_metrics.ejection)
        budgets = RetryBudgets(settings.retry_budget)
        registry = BackendRegistry(
            build(settings, client), ejector, budgets, settings.routing, settings.failover_on
        )
        loader = OnDemandLoader.from_settings(settings, registry, app_metrics)
        for backend in registry.backends():
            if not loader.manages(backend.name):  # on-demand models start on a request
                await backend.start()
        await loader.start()
        store = build_store(settings)  # batch.store: SQLite, or PostgreSQL shared by gateways
        await store.open()
        runner = BatchRunner(
            store,
            registry,
            settings.batch,
            resolver.resolve,
            metrics=app_metrics,
            loader=loader,
            # Each batch runs as its owner: the models that key may call.
            callers=KeyRing.from_settings(settings.security).caller_named,
        )
        await runner.start()
        state = GatewayState(
            settings, started_at, registry, loader, resolver, store, runner, app_metrics, tracer
        )
        log.info("%s", startup_summary(settings, registry))
        try:
            yield state
        finally:
            await runner.stop()
            await store.close()
            await loader.stop()  # loads under way stopped (their processes too)
            for backend in registry.backends():
                await backend.stop()
            # The spans still buffered go out last; in a thread, since an exporter may
            # wait on an unreachable collector.
            await asyncio.to_thread(tracer.shutdown)


def upstream_session(settings: GatewaySettings) -> aiohttp.ClientSession:
    """The pooled client for upstreams' health probes, liveness checks and metrics (requests
    go through each backend's own HTTP/1.1 pool). Each call passes its own timeout. No cookie
    jar: cookies one upstream sets must not travel with later requests."""
    connector = aiohttp.TCPConnector(limit=settings.max_upstream_connections)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


def _install_error_handlers(app: FastAPI) -> None:
    """The only place errors become responses: one envelope, never FastAPI's own shapes."""

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return _envelope(exc, request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        return _envelope(InvalidRequestError(first.get("msg", "Invalid request.")), request)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return _envelope(
                NotFoundError(f"No route {request.method} {request.url.path}."), request
            )
        error = GatewayError(
            str(exc.detail), status_code=exc.status_code, error_type="invalid_request_error"
        )
        return _envelope(error, request)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        # Starlette runs this one outside every middleware: the request id comes from the scope.
        context: RequestContext | None = request.scope.get(REQUEST_CONTEXT_SCOPE)
        if context is None:
            log.exception("unhandled error", exc_info=exc)
            return _envelope(GatewayError("The gateway failed to handle the request."), request)
        with bound_request(context):
            log.exception("unhandled error", exc_info=exc)
        response = _envelope(GatewayError("The gateway failed to handle the request."), request)
        response.headers[REQUEST_ID_HEADER] = context.request_id
        return response


def _envelope(exc: GatewayError, request: Request) -> Response:
    """The route's envelope: Anthropic's on its routes, OpenAI's elsewhere (error_shapes.py)."""
    status, body = error_reply(request.scope.get("path"), exc)
    response = json_response(body, status_code=status)
    response.headers.update(exc.headers)
    return response
