"""The hot routes past FastAPI's router (issue 14): which requests take the fast lane, and that
what they answer (errors included) is what the router path answers."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI, Request, Response

from tests.support.settings import two_upstreams
from vlm_gateway.core.errors import GatewayError, InvalidRequestError
from vlm_gateway.server.app import create_app
from vlm_gateway.server.fast_routes import FastRoutesMiddleware, hot_routes
from vlm_gateway.server.route_helpers import json_response


def test_the_app_serves_chat_and_completions_in_the_fast_lane():
    paths = {route.path for route in hot_routes(create_app(two_upstreams()).routes)}
    assert paths == {"/v1/chat/completions", "/v1/completions"}


def stub_app(seen: list[str]) -> FastAPI:
    """Chat answers or refuses by the body; every request the router sees is noted."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        if "messages" not in body:
            raise InvalidRequestError("Missing required parameter: 'messages'.", param="messages")
        return json_response({"route": request.scope["route"].path})

    @app.exception_handler(GatewayError)
    async def envelope(_: Request, exc: GatewayError) -> Response:
        return json_response(exc.envelope(), status_code=exc.status_code)

    app.add_middleware(FastRoutesMiddleware, routes=hot_routes(app.routes))

    @app.middleware("http")  # outermost: sees everything, notes what reached the router
    async def note(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        if "endpoint" in request.scope and "fastapi_middleware_astack" in request.scope:
            seen.append(f"{request.method} {request.url.path}")
        return response

    return app


def call(app: FastAPI, method: str, path: str, body: dict | None = None) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.request(method, path, json=body)

    return asyncio.run(run())


def test_chat_skips_the_router_and_keeps_its_route_and_error_envelope():
    seen: list[str] = []
    app = stub_app(seen)
    ok = call(app, "POST", "/v1/chat/completions", {"messages": []})
    assert ok.json() == {"route": "/v1/chat/completions"}
    refused = call(app, "POST", "/v1/chat/completions", {"model": "m"})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "messages"
    assert seen == []  # neither went through FastAPI's router


def test_other_methods_and_paths_still_take_the_router():
    seen: list[str] = []
    app = stub_app(seen)
    assert call(app, "GET", "/v1/chat/completions").status_code == 405
    assert call(app, "POST", "/v1/other", {}).status_code == 404
    assert call(app, "POST", "/v1/chat/completions/", {"messages": []}).status_code in (307, 404)
