"""The app's side of a graceful drain (docs/reliability.md, "Graceful drain").

`Drain` is what the serving process (vlm_gateway/cli/drain_server.py) flips when SIGTERM
arrives: from then on /ready answers 503 "draining" and every answer carries
`connection: close`, so clients move to another gateway. `DrainGuard`, a pure ASGI wrapper
around the whole app, counts the HTTP requests in flight (the drain waits for them) and, when
`shutdown_grace` has run out, cuts those left: one that has not answered yet gets a 503
envelope, a stream that has begun ends with an error event (never a silent cut).

Routes reach the drain through `drain_of(request)` (the app's `state.drain`); an app served
without one (tests in-process) is never draining.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import orjson
from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlm_gateway.core.errors import GatewayError, ServiceUnavailableError
from vlm_gateway.core.sse import frame, named_frame
from vlm_gateway.server.error_shapes import ANTHROPIC_PATHS, error_reply

log = logging.getLogger(__name__)

_CUT_MESSAGE = "The gateway is shutting down and did not finish this request within its grace."


@dataclass
class _InFlight:
    task: asyncio.Task[object] | None
    started: bool = False  # the answer's head was sent
    stream: bool = False  # ... and it is an event stream
    finished: bool = False  # its last byte was sent


class Drain:
    """Whether the app is draining, and the HTTP requests it has in flight."""

    def __init__(self) -> None:
        self.began_at: float | None = None  # time.monotonic() of the drain's start
        self.cutting = False
        self._in_flight: dict[int, _InFlight] = {}

    @property
    def draining(self) -> bool:
        return self.began_at is not None

    def begin(self) -> None:
        """Start draining (idempotent): /ready says 503 and answers close their connection."""
        if self.began_at is None:
            self.began_at = time.monotonic()

    def in_flight(self) -> int:
        return len(self._in_flight)

    def cut(self) -> int:
        """Cancel every request still in flight (each ends with an error, see `DrainGuard`);
        how many there were."""
        self.cutting = True
        entries = list(self._in_flight.values())
        for entry in entries:
            if entry.task is not None:
                entry.task.cancel()
        return len(entries)

    def _enter(self, key: int) -> _InFlight:
        entry = _InFlight(asyncio.current_task())
        self._in_flight[key] = entry
        return entry

    def _leave(self, key: int) -> None:
        self._in_flight.pop(key, None)

    def wrap(self, app: FastAPI) -> DrainGuard:
        """The app to serve: `app` behind a `DrainGuard`, with this drain as its state."""
        app.state.drain = self
        return DrainGuard(app, self)


def drain_of(request: Request) -> Drain | None:
    """The drain of the app serving `request` (None: served without one)."""
    drain = getattr(request.app.state, "drain", None)
    return drain if isinstance(drain, Drain) else None


class DrainGuard:
    """Outermost ASGI wrapper: counts HTTP requests, closes connections while draining, and
    turns a cut into an error the client can read."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        drain = self.drain
        key = id(scope)
        entry = drain._enter(key)

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                _note_start(entry, message, drain.draining)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                entry.finished = True
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except asyncio.CancelledError:
            if not drain.cutting or entry.task is None:
                raise
            entry.task.uncancel()  # our own cut: answer it, and the task ends normally
            await _answer_cut(scope.get("path"), entry, send)
        finally:
            drain._leave(key)


def _note_start(entry: _InFlight, message: Message, draining: bool) -> None:
    entry.started = True
    headers = message.get("headers", ())
    for name, value in headers:
        if name.lower() == b"content-type":
            entry.stream = value.startswith(b"text/event-stream")
            break
    if draining:  # the client's next request goes to a gateway that is not stopping
        message["headers"] = [*headers, (b"connection", b"close")]


async def _answer_cut(path: str | None, entry: _InFlight, send: Send) -> None:
    """A 503 envelope if nothing was sent yet; an error event to end a stream that began;
    nothing more can be said inside a JSON body already under way."""
    error = ServiceUnavailableError(_CUT_MESSAGE, code="shutting_down")
    try:
        if not entry.started:
            await _send_json_error(path, error, send)
        elif entry.stream and not entry.finished:
            body = _error_event(path, error)
            await send({"type": "http.response.body", "body": body, "more_body": False})
        else:
            return
    except OSError:  # the client is gone as well
        return
    log.warning("request %s cut at the end of shutdown_grace", path)


async def _send_json_error(path: str | None, error: GatewayError, send: Send) -> None:
    status, body = error_reply(path, error)
    payload = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def _error_event(path: str | None, error: GatewayError) -> bytes:
    _, body = error_reply(path, error)
    return named_frame("error", body) if path in ANTHROPIC_PATHS else frame(body)
