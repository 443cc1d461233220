"""The app factory: everything is built here from typed settings and handed to the routes as
one typed `GatewayState` (vlm_gateway/server/state.py)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from vlm_gateway.backends.base import Backend
from vlm_gateway.backends.kinds import build_backends
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.errors import GatewayError, InvalidRequestError, NotFoundError
from vlm_gateway.server.batch.runner import BatchRunner
from vlm_gateway.server.batch.store import Store
from vlm_gateway.server.door.install import install_security, open_image_resolver
from vlm_gateway.server.route_helpers import json_response
from vlm_gateway.server.routes import batches, chat, completions, files, health, models
from vlm_gateway.server.state import GatewayState

log = logging.getLogger(__name__)

BackendBuilder = Callable[[GatewaySettings, aiohttp.ClientSession], list[Backend]]


def create_app(settings: GatewaySettings, build: BackendBuilder = build_backends) -> FastAPI:
    started_at = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (
            upstream_session(settings) as client,
            open_image_resolver(settings) as image_resolver,
        ):
            registry = BackendRegistry(build(settings, client))
            for backend in registry.backends():
                await backend.start()
            store = Store(settings.data_dir)
            await store.open()
            runner = BatchRunner(store, registry, settings.batch, image_resolver.resolve)
            await runner.start()
            app.state.gateway = GatewayState(
                settings, started_at, registry, image_resolver, store, runner
            )
            try:
                yield
            finally:
                await runner.stop()
                await store.close()
                for backend in registry.backends():
                    await backend.stop()

    app = FastAPI(
        title="vlm-gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    for module in (chat, completions, models, health, files, batches):
        app.include_router(module.router)
    _install_error_handlers(app)
    install_security(app, settings)
    return app


def upstream_session(settings: GatewaySettings) -> aiohttp.ClientSession:
    """The one pooled client for every upstream (remote and managed vLLM): aiohttp costs about
    a fifth of httpx's CPU per request (docs/benchmarks.md). Each call passes its own timeout.
    No cookie jar: cookies one upstream sets must not travel with later requests."""
    connector = aiohttp.TCPConnector(limit=settings.max_upstream_connections)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


def _install_error_handlers(app: FastAPI) -> None:
    """The only place errors become responses: one envelope, never FastAPI's own shapes."""

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> Response:
        return _envelope(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        return _envelope(InvalidRequestError(first.get("msg", "Invalid request.")))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return _envelope(NotFoundError(f"No route {request.method} {request.url.path}."))
        error = GatewayError(
            str(exc.detail), status_code=exc.status_code, error_type="invalid_request_error"
        )
        return _envelope(error)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return _envelope(GatewayError("The gateway failed to handle the request."))


def _envelope(exc: GatewayError) -> Response:
    response = json_response(exc.envelope(), status_code=exc.status_code)
    response.headers.update(exc.headers)
    return response
