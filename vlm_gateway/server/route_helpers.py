"""Request parsing and response helpers shared by the routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Coroutine
from typing import Any, TypeVar

import orjson
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError

from vlm_gateway.backends.base import Backend
from vlm_gateway.core.errors import GatewayError, InvalidRequestError, validation_error_to_gateway
from vlm_gateway.core.sse import error_event

log = logging.getLogger(__name__)
ModelT = TypeVar("ModelT", bound=BaseModel)

# nginx's convention for "the client closed the connection first"; nobody reads it.
CLIENT_CLOSED_REQUEST = 499
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def parse_body(request: Request, model: type[ModelT]) -> ModelT:
    """Validate the JSON body against a protocol model; failures are 400s naming the field."""
    body = await request.body()
    if not body:
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error_to_gateway(exc) from None


def json_response(payload: dict[str, Any], status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


async def call_tracked(
    request: Request, backend: Backend, call: Coroutine[Any, Any, dict[str, Any]]
) -> Response:
    """Run a non-streaming call, abandoning it if the client disconnects first, so an upstream
    request (or a generation) nobody waits for any more is stopped, not finished."""
    backend.in_flight += 1
    work = asyncio.ensure_future(call)
    client_gone = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait((work, client_gone), return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            log.info("client left before model %s answered: request abandoned", backend.name)
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return json_response(work.result())
    finally:
        client_gone.cancel()
        backend.in_flight -= 1


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def stream_tracked(backend: Backend, opening: Awaitable[AsyncIterator[bytes]]) -> Response:
    """Open the backend's stream first: an error before the first event is a plain JSON error
    with the right status; only then do we commit to a 200 event stream."""
    backend.in_flight += 1
    try:
        events = await opening
    except BaseException:
        backend.in_flight -= 1
        raise
    return StreamingResponse(
        _guarded(backend, events), media_type="text/event-stream", headers=_SSE_HEADERS
    )


async def _guarded(backend: Backend, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield event
    except GatewayError as exc:
        log.warning("stream for model %s ended with an error: %s", backend.name, exc.message)
        yield error_event(exc)
    except Exception:
        log.exception("stream for model %s failed", backend.name)
        yield error_event(GatewayError("The stream failed inside the gateway."))
    finally:
        backend.in_flight -= 1
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
