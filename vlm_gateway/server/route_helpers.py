"""Request parsing and response helpers shared by the routes: the body read and validated, JSON
answers, and a backend's event stream relayed to the client (server/serving.py serves)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from vlm_gateway.backends.base import Backend
from vlm_gateway.core.errors import GatewayError, InvalidRequestError, validation_error_to_gateway
from vlm_gateway.core.request_context import note_model
from vlm_gateway.core.sse import error_event
from vlm_gateway.server.door.request_metrics import RequestTracker, request_tracker
from vlm_gateway.server.http_protocol import CLIENT_GONE_SCOPE, ClientGone

log = logging.getLogger(__name__)
ModelT = TypeVar("ModelT", bound=BaseModel)

# nginx's convention for "the client closed the connection first"; nobody reads it.
CLIENT_CLOSED_REQUEST = 499
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def read_body(request: Request) -> bytes:
    """The whole body, as `request.body()` but uncopied when it came in one piece (as the
    gateway's HTTP protocol hands it over): Starlette joins the pieces and a closing b"",
    a copy of every body (5% of the CPU of a 450 KB image request at 64 in flight). Read
    from `receive` itself: `request.stream()`'s async generator cost more than the read."""
    pieces: list[bytes] = []
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        piece = message.get("body", b"")
        if piece:
            pieces.append(piece)
        if not message.get("more_body", False):
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)


async def parse_body(
    request: Request, model: type[ModelT], loads: Callable[[bytes], Any] = orjson.loads
) -> ModelT:
    """Validate the JSON body against a protocol model; failures are 400s naming the field.
    `loads`: orjson's, or one with the same results faster for its route's bodies."""
    body = await read_body(request)
    if not body:
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    try:
        # orjson, then pydantic on the Python objects: half the time of model_validate_json
        # for a body with a large image (150 against 270 µs at 450 KB), and the image strings
        # are not copied again.
        data = loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error_to_gateway(exc) from None
    named_model = getattr(parsed, "model", None)
    if isinstance(named_model, str):
        note_model(named_model)  # for the request's log lines, also when it turns out unknown
        tracker = request_tracker(request.scope)
        if tracker is not None:
            tracker.named_model(named_model)  # for its metrics (an unknown one counts as "")
    return parsed


def client_gone(request: Request) -> tuple[ClientGone, Callable[[], object]]:
    """The request's ClientGone and what stops watching it: the gateway's HTTP protocol fires
    its own; under another server (or in process) a task waits on `receive()` for the
    disconnect instead."""
    gone = request.scope.get(CLIENT_GONE_SCOPE)
    if isinstance(gone, ClientGone):
        return gone, _nothing
    gone = ClientGone()
    watcher = asyncio.ensure_future(_went_when_disconnected(request, gone))
    return gone, watcher.cancel


def _nothing() -> None:
    return None


async def _went_when_disconnected(request: Request, gone: ClientGone) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.went()


def json_response(payload: dict[str, Any], status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


class StreamRelay:
    """The backend's events on their way to the client, and the end of the request's hold on
    the backend (in flight count, upstream stream) exactly once: when the events run out, or
    when the response ends before they were ever read (a client gone at once)."""

    def __init__(
        self, backend: Backend, events: AsyncIterator[bytes], tracker: RequestTracker | None
    ) -> None:
        self._backend = backend
        self._events = events
        self._tracker = tracker
        self._finished = False

    async def events(self) -> AsyncIterator[bytes]:
        backend, tracker = self._backend, self._tracker
        try:
            async for event in self._events:
                if tracker is not None:
                    tracker.stream_event(event)
                yield event
        except GatewayError as exc:
            log.warning("stream for model %s ended with an error: %s", backend.name, exc.message)
            yield error_event(exc)
        except Exception:
            log.exception("stream for model %s failed", backend.name)
            yield error_event(GatewayError("The stream failed inside the gateway."))
        finally:
            await self.finish()

    async def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._backend.in_flight -= 1
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()


class RelayedStream(StreamingResponse):
    """An event stream that lets go of its backend however the response ends: Starlette
    cancels the body for a client that is gone before the first event, and an async
    generator that never started runs no `finally`."""

    def __init__(self, relay: StreamRelay) -> None:
        super().__init__(relay.events(), media_type="text/event-stream", headers=_SSE_HEADERS)
        self._relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._relay.finish()
