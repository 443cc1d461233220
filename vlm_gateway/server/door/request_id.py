"""Request ids and the access log, as the outermost pure ASGI middleware.

Each HTTP request gets an id: the client's `X-Request-Id` when it is usable (1-128 characters
of `A-Z a-z 0-9 . _ : + / = -`), otherwise a new `req_<32 hex>` (a bad one is replaced, never
echoed or logged). The id is bound for the request (vlm_gateway/core/request_context.py), so
the upstream client forwards it and every log line about the request carries it, and it is
added to the start of every response: JSON, errors, the door's refusals and event streams.
When the response has ended, one access line: method, path, status, duration, the key's name
(`anonymous` without one; never the key), model, and the usage: tokens and images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlm_gateway.core.request_context import (
    REQUEST_ID_HEADER,
    RequestContext,
    accepted_request_id,
    bound_request,
    new_request_id,
)
from vlm_gateway.server.door.keys import ANONYMOUS
from vlm_gateway.server.door.reply import header

access_log = logging.getLogger("vlm_gateway.access")

# Where the middleware leaves the request's context for code that runs after it returns
# (the app's last-resort 500 handler sits outside every middleware).
REQUEST_CONTEXT_SCOPE = "vlmgw.request_context"
_HEADER = REQUEST_ID_HEADER.encode()
_MAX_LOGGED_PATH = 300
# What an app that raised before answering ends up sending (the last-resort handler's 500).
_UNANSWERED_STATUS = 500


class RequestIdMiddleware:
    def __init__(
        self, app: ASGIApp, access_log: bool = True, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.app = app
        self._access_log = access_log
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = header(scope, _HEADER)
        request_id = accepted_request_id(presented.decode("latin-1") if presented else None)
        # Anonymous until the key middleware (inside this one) names the caller.
        context = RequestContext(request_id or new_request_id(), key=ANONYMOUS.name)
        scope[REQUEST_CONTEXT_SCOPE] = context
        id_header = (_HEADER, context.request_id.encode())
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = _with_header(message.get("headers", ()), id_header)
                message = {**message, "headers": headers}
            await send(message)

        started = self._clock()
        try:
            with bound_request(context):
                await self.app(scope, receive, send_with_id)
        finally:
            if self._access_log:
                elapsed_ms = (self._clock() - started) * 1000
                _log_access(scope, context, status or _UNANSWERED_STATUS, elapsed_ms)


def _with_header(
    headers: Iterable[tuple[bytes, bytes]], id_header: tuple[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    """The response's headers with ours as the only X-Request-Id."""
    return [(name, value) for name, value in headers if name.lower() != _HEADER] + [id_header]


def _log_access(scope: Scope, context: RequestContext, status: int, elapsed_ms: float) -> None:
    method: str = scope.get("method", "")
    path: str = scope["path"]
    query: bytes = scope.get("query_string", b"")
    if query:
        path += "?" + query.decode("latin-1")
    path = path[:_MAX_LOGGED_PATH]
    client: tuple[str, int] | None = scope.get("client")
    address = client[0] if client else "-"
    duration_ms = round(elapsed_ms, 1)
    access_log.info(
        '%s "%s %s" %d %.1f ms%s',
        address,
        method,
        path,
        status,
        duration_ms,
        _who_and_usage(context),
        extra={
            "request_id": context.request_id,
            "model": context.model,
            "key": context.key,
            "status": status,
            "duration_ms": duration_ms,
            "method": method,
            "path": path,
            "client": address,
            "prompt_tokens": context.prompt_tokens,
            "completion_tokens": context.completion_tokens,
            "images": context.images or None,
        },
    )


def _who_and_usage(context: RequestContext) -> str:
    """` key=NAME model=M prompt_tokens=P completion_tokens=C images=N`, each part only when
    known (images when the request had any)."""
    parts = [
        ("key", context.key),
        ("model", context.model),
        ("prompt_tokens", context.prompt_tokens),
        ("completion_tokens", context.completion_tokens),
        ("images", context.images or None),
    ]
    return "".join(f" {name}={value}" for name, value in parts if value not in (None, ""))
