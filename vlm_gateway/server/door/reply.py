"""Answering from pure ASGI middleware, which sits outside FastAPI's exception handlers: the
same envelope the handlers write for the route (vlm_gateway/server/error_shapes.py), written
straight to `send`."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from starlette.types import Scope, Send

from vlm_gateway.core.errors import GatewayError
from vlm_gateway.server.error_shapes import error_reply


async def send_error(send: Send, error: GatewayError, scope: Scope | None = None) -> None:
    """`scope`: the refused request's, so the envelope is its route's (Anthropic's or OpenAI's)."""
    status, payload = error_reply(scope.get("path") if scope is not None else None, error)
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> bytes | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for key, value in headers:
        if key == name:
            return value
    return None
