"""Request metrics: every HTTP request is counted by route template, method, status, model,
replica and key name, and its duration observed, once its response has ended (for a stream,
after its last event): the door (door.py) counts it.

The door leaves a `RequestTracker` in the scope. What only later code learns is written
into it: the model (route_helpers.parse_body), the replica that served (serving.py's
ModelRequest), the first event of a stream, the tokens from `usage`, the images, and the
reason the door refused the request (`note_refusal`), and for the `Server-Timing` header the
seconds spent on images and waiting for the backend. The key name is the caller the
key check left in the scope (`anonymous` without one). Tokens and images also go to the
request's context, for its access line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import orjson
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from vlm_gateway.core.metrics import Metrics
from vlm_gateway.core.request_context import note_images, note_usage
from vlm_gateway.core.usage import token_counts
from vlm_gateway.server.door.keys import caller_of

METRICS_SCOPE = "vlmgw.metrics"
UNMATCHED_ROUTE = "unmatched"  # a path no route serves: one label value, not the raw path


class RequestTracker:
    def __init__(self, metrics: Metrics, scope: Scope, clock: Callable[[], float]) -> None:
        self._metrics = metrics
        self._scope = scope
        self.clock = clock
        self.started = clock()
        self.model = ""
        self.replica = ""
        self.refusal: str | None = None
        # Server-Timing: image work, and the backend's answer (JSON) or its stream's opening.
        self.images_s = 0.0
        self.backend_s = 0.0
        self._first_event_seen = False
        self._stream_usage: Mapping[str, Any] | None = None

    def named_model(self, model: str) -> None:
        self.model = model

    def served_by(self, model: str, replica: str) -> None:
        self.model, self.replica = model, replica

    @property
    def key(self) -> str:
        """The caller's key name: known once the key middleware has run."""
        return caller_of(self._scope).name

    def usage(self, usage: Mapping[str, Any] | None) -> None:
        self._metrics.usage(self.model, self.replica, usage, key=self.key)
        note_usage(token_counts(usage))

    def images(self, count: int) -> None:
        self._metrics.request_images(self.model, self.key, count)
        note_images(count)

    def stream_event(self, event: bytes) -> None:
        """One SSE event on its way to the client: the first one is the time to first token;
        a `usage` object (sent when stream_options.include_usage is set) is kept, the last one
        counted when the stream ends (some servers repeat a running total on every chunk)."""
        if not self._first_event_seen:
            self._first_event_seen = True
            elapsed = self.clock() - self.started
            self._metrics.first_token(
                _route_template(self._scope), self.model, self.replica, elapsed
            )
        if b'"prompt_tokens"' in event:  # cheap test: only usage objects carry it
            self._stream_usage = _event_usage(event) or self._stream_usage

    def finish(self) -> None:
        if self._stream_usage is not None:
            self.usage(self._stream_usage)
            self._stream_usage = None


def request_tracker(scope: Scope) -> RequestTracker | None:
    """The request's tracker; None where the middleware is not installed (unit tests)."""
    tracker = scope.get(METRICS_SCOPE)
    return tracker if isinstance(tracker, RequestTracker) else None


def note_refusal(scope: Scope, reason: str) -> None:
    """Called where the door refuses: the reason joins the request's count."""
    tracker = request_tracker(scope)
    if tracker is not None:
        tracker.refusal = reason


class RouteTemplates:
    """The route template a request counts under: the one the router matched, or for a request
    the router never saw (refused at the door, or no route serves it) the first route whose
    pattern it matches."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._routes = routes  # the app's own list: routes included later are seen too
        self._leaves: list[BaseRoute] | None = None

    def of(self, scope: Scope) -> str:
        return _route_template(scope) or self._match_route(scope)

    def _match_route(self, scope: Scope) -> str:
        if self._leaves is None:  # on the first such request: every route is included by then
            self._leaves = list(_leaf_routes(self._routes))
        for route in self._leaves:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return str(getattr(route, "path", UNMATCHED_ROUTE))
        return UNMATCHED_ROUTE


def count_request(
    metrics: Metrics,
    tracker: RequestTracker,
    route: str,
    method: str,
    status: int,
    elapsed: float,
) -> None:
    """The request's count and duration, once its response has ended (tokens of a stream's
    last usage event first), and its refusal if the door refused it."""
    tracker.finish()
    metrics.request_done(
        route, method, status, tracker.model, tracker.replica, elapsed, key=tracker.key
    )
    if tracker.refusal is not None:
        metrics.refusal(tracker.refusal, tracker.model)


def _leaf_routes(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes themselves: FastAPI wraps each included router in one entry of app.routes
    (its `original_router` holds the routes; the gateway includes them without a prefix)."""
    for route in routes:
        included = getattr(getattr(route, "original_router", None), "routes", None)
        if included is not None:
            yield from _leaf_routes(included)
        else:
            yield route


def _event_usage(event: bytes) -> Mapping[str, Any] | None:
    try:
        data = orjson.loads(event.removeprefix(b"data:").strip())
    except orjson.JSONDecodeError:
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    return usage if isinstance(usage, dict) else None


def _route_template(scope: Scope) -> str:
    """The template the router matched ("/v1/files/{file_id}"), or "" before routing."""
    return str(getattr(scope.get("route"), "path", ""))
