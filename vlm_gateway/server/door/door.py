"""The door: the one pure-ASGI layer every HTTP request passes on its way in and out.

On the way in, in this order: the request's id (the client's `X-Request-Id` when usable, 1-128
characters of `A-Z a-z 0-9 . _ : + / = -`, else a new `req_<32 hex>`; a bad one is replaced,
never echoed or logged), bound for the request (core/request_context.py) so the upstream client
forwards it and every log line carries it; the metrics tracker left in the scope
(request_metrics.py); then the checks: the API key (auth.py), the per-key rate and in-flight
limits, the body cap (limits.py). A refusal is answered here, in the route's envelope.

On the way out: every response starts with our `X-Request-Id` and a `Server-Timing` header
(`server_timing: false` leaves it off): `gateway` the gateway's own time so far, `upstream` the
backend's (to its answer, or to a stream's opening), `images` the image work within the
gateway's time. When the response has ended (a stream after its last event): the request's
count and duration, and one access line (access_line.py).

One layer instead of one middleware per job (issue 23): each wrapped `send` and `receive`,
each scope lookup of the one before, was paid per request and per streamed event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlm_gateway.core.errors import GatewayError
from vlm_gateway.core.metrics import AUTH, BODY_SIZE, RATE_LIMIT, Metrics
from vlm_gateway.core.request_context import (
    REQUEST_ID_HEADER,
    RequestContext,
    accepted_request_id,
    bound_request,
    new_request_id,
)
from vlm_gateway.server.door.access_line import write_access_line
from vlm_gateway.server.door.auth import KeyCheck
from vlm_gateway.server.door.keys import ANONYMOUS
from vlm_gateway.server.door.limits import BodyLimit, RateLimiter
from vlm_gateway.server.door.reply import header, send_error
from vlm_gateway.server.door.request_metrics import (
    METRICS_SCOPE,
    RequestTracker,
    RouteTemplates,
    count_request,
    note_refusal,
)

# Where the door leaves the request's context for code that runs after it returns (the app's
# last-resort 500 handler sits outside every middleware).
REQUEST_CONTEXT_SCOPE = "vlmgw.request_context"
_REQUEST_ID = REQUEST_ID_HEADER.encode()
_SERVER_TIMING = b"server-timing"
# What an app that raised before answering ends up sending (the last-resort handler's 500).
_UNANSWERED_STATUS = 500

Release = Callable[[], None]


class Door:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics | None = None,
        routes: Sequence[BaseRoute] = (),
        access_log: bool = True,
        server_timing: bool = True,
        keys: KeyCheck | None = None,
        limiter: RateLimiter | None = None,
        body_limit: BodyLimit | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self._metrics = metrics if metrics is not None else Metrics(())
        self._routes = RouteTemplates(routes)
        self._access_log = access_log
        self._server_timing = server_timing
        self._keys = keys
        self._limiter = limiter
        self._body_limit = body_limit
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        presented = header(scope, _REQUEST_ID)
        request_id = accepted_request_id(presented.decode("latin-1") if presented else None)
        # Anonymous until the key check names the caller.
        context = RequestContext(request_id or new_request_id(), key=ANONYMOUS.name)
        tracker = RequestTracker(self._metrics, scope, self._clock)
        scope[REQUEST_CONTEXT_SCOPE] = context
        scope[METRICS_SCOPE] = tracker
        status = _UNANSWERED_STATUS

        async def send_marked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = self._headers(message.get("headers", ()), context, tracker)
                message = {**message, "headers": headers}
            await send(message)

        try:
            with bound_request(context):
                await self._enter(scope, receive, send_marked)
        finally:
            self._leave(scope, context, tracker, status)

    async def _enter(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal, release = self._admission(scope)
        if refusal is not None:
            await send_error(send, refusal, scope)
            return
        try:
            if self._body_limit is not None:
                receive = self._body_limit.counted(scope, receive)
            await self.app(scope, receive, send)
        finally:
            if release is not None:
                release()

    def _admission(self, scope: Scope) -> tuple[GatewayError | None, Release | None]:
        """The key, then the rate limits (a request let through holds an in-flight slot until
        `release`), then the declared body size: the first refusal, or what to release."""
        if self._keys is not None and (refusal := self._keys.refusal(scope)) is not None:
            note_refusal(scope, AUTH)
            return refusal, None
        release = None
        if self._limiter is not None:
            limited, release = self._limiter.admit(scope)
            if limited is not None:
                note_refusal(scope, RATE_LIMIT)
                return limited, None
        if self._body_limit is not None and (too_big := self._body_limit.refusal(scope)):
            note_refusal(scope, BODY_SIZE)
            if release is not None:
                release()
            return too_big, None
        return None, release

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Lifespan passes; a WebSocket needs a key like any guarded route."""
        if scope["type"] == "websocket" and self._keys is not None and self._keys.refusal(scope):
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)

    def _headers(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        context: RequestContext,
        tracker: RequestTracker,
    ) -> list[tuple[bytes, bytes]]:
        """The response's headers with ours as the only X-Request-Id, and Server-Timing."""
        marked = [(name, value) for name, value in headers if name.lower() != _REQUEST_ID]
        marked.append((_REQUEST_ID, context.request_id.encode()))
        if self._server_timing:
            marked.append((_SERVER_TIMING, server_timing(tracker)))
        return marked

    def _leave(
        self, scope: Scope, context: RequestContext, tracker: RequestTracker, status: int
    ) -> None:
        elapsed = self._clock() - tracker.started
        method: str = scope.get("method", "")
        count_request(self._metrics, tracker, self._routes.of(scope), method, status, elapsed)
        if self._access_log:
            write_access_line(scope, context, status, elapsed * 1000)


def server_timing(tracker: RequestTracker) -> bytes:
    """`gateway;dur=0.214, upstream;dur=0.160, images;dur=0.041` in milliseconds, as the
    response starts; `upstream` once a backend was called, `images` when the request had any."""
    upstream, images = tracker.backend_s, tracker.images_s
    gateway = max(0.0, tracker.clock() - tracker.started - upstream)  # never below zero
    timing = f"gateway;dur={gateway * 1000:.3f}"
    if upstream:
        timing += f", upstream;dur={upstream * 1000:.3f}"
    if images:
        timing += f", images;dur={images * 1000:.3f}"
    return timing.encode()
