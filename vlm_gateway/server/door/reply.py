"""Answering from pure ASGI middleware, which sits outside FastAPI's exception handlers: the
same envelope (`GatewayError.envelope()`), written straight to `send`."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from starlette.types import Scope, Send

from vlm_gateway.core.errors import GatewayError


async def send_error(send: Send, error: GatewayError) -> None:
    body = orjson.dumps(error.envelope())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> bytes | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for key, value in headers:
        if key == name:
            return value
    return None
