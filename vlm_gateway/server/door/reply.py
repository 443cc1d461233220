"""Answering from pure ASGI middleware, which sits outside FastAPI's exception handlers: the
same envelope (`GatewayError.envelope()`), written straight to `send`."""

from __future__ import annotations

import orjson

from vlm_gateway.core.errors import GatewayError


async def send_error(send, error: GatewayError) -> None:
    body = orjson.dumps(error.envelope())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None
