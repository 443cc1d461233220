"""The hot routes, served past FastAPI's router (issue 14).

For a 1-token chat request FastAPI's routing (route matching over the included routers, the
dependency solver, the endpoint wrapper and its exit stack) cost about a third of the gateway's
CPU, more than the upstream call. The chat and completions endpoints take nothing but the raw
`Request`, so this pure ASGI middleware, the innermost one (inside the door: keys, limits,
request ids and metrics all still apply), calls them directly. Everything else a request would
have met is kept: `scope["route"]` is the same APIRoute (route-templated metrics; OpenAPI still
lists the routes), and errors go through the app's own exception handlers, so the envelope,
status and `param` are exactly those of the router path. With tracing on, requests take the
router as before: FastAPI's request span learns its name from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, TypeGuard

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from vlm_gateway.core.errors import GatewayError

# The POST routes served here: their endpoints take only the request and raise GatewayError.
HOT_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


def hot_routes(routes: Iterable[BaseRoute], paths: frozenset[str] = HOT_PATHS) -> list[APIRoute]:
    """The app's POST routes for `paths`. FastAPI wraps each included router in one entry of
    app.routes (its `original_router` holds the routes; the gateway includes them without a
    prefix)."""
    found: list[APIRoute] = []
    for route in routes:
        included = getattr(getattr(route, "original_router", None), "routes", None)
        if included is not None:
            found += hot_routes(included, paths)
        elif _is_hot(route, paths):
            found.append(route)
    return found


def _is_hot(route: BaseRoute, paths: frozenset[str]) -> TypeGuard[APIRoute]:
    """A POST route for one of `paths` whose endpoint takes the request alone: one with
    dependencies or other parameters needs FastAPI's solver, so the router keeps it."""
    if not isinstance(route, APIRoute) or route.path not in paths:
        return False
    parameters = inspect.signature(route.endpoint).parameters
    return "POST" in (route.methods or ()) and len(parameters) == 1 and not route.dependencies


class FastRoutesMiddleware:
    def __init__(self, app: ASGIApp, routes: Iterable[APIRoute]) -> None:
        self.app = app
        self._routes = {route.path: route for route in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST" or _routed_elsewhere(scope):
            await self.app(scope, receive, send)  # the router decides, as before
            return
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except GatewayError as exc:
            response = await _handled(request, exc)
        await response(scope, receive, send)


def _routed_elsewhere(scope: Scope) -> bool:
    """Requests the router must see: under a root path (mounted), or while tracing is on
    (FastAPI's request span learns its route name from the router)."""
    return bool(scope.get("root_path")) or scope.get("fastapi.telemetry") is not None


async def _handled(request: Request, exc: GatewayError) -> Response:
    """What the app's ExceptionMiddleware would answer: its handler for the nearest class."""
    handlers: dict[Any, Any] = request.app.exception_handlers
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            response: Response = await handler(request, exc)
            return response
    raise exc
