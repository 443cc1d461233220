"""uvicorn's HTTP/1.1 protocol with a deadline on each request's head (slowloris), and request
bodies handed to the app whole.

uvicorn (0.54) times a connection out only while it idles between requests (its keep-alive
timeout, disarmed by the first byte of the next request); a client that opens a connection and
sends nothing, or sends its request line and headers a byte every few seconds, holds the
connection and its file descriptor for as long as it likes; and with httptools it takes a
head of any size (8 MiB of headers measured: accepted). Here each request's head (request line
and headers) must arrive in full within `header_timeout` seconds of the connection opening or
of its first byte, and be at most MAX_HEAD_BYTES; otherwise the connection is closed (after a
431 for a head too large). Bodies and responses are not affected (docs/reliability.md, "Chaos
tests").

Bodies: uvicorn hands the app each piece as it arrives and stops reading the socket at 64 KiB
until the app asks for more, so a 450 KB image request went through the app's whole middleware
chain about eight times, with the socket paused and resumed in between (about a tenth of the
gateway's CPU for that request at 64 in flight, docs/benchmarks.md). Every route here reads the
whole body before it acts, so a body of up to WHOLE_BODY_BYTES now reaches the app in one
piece once it has all arrived; a larger one (a file upload) goes on in pieces, as before.

A client that leaves: each request's scope carries a `ClientGone` that the protocol fires when
the connection is lost before the response completes, so the app learns it without a task per
request waiting on `receive()` (server/serving.py abandons the backend call; issue 23).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# As nginx's default (4 buffers of 8 KiB) with room to spare; h11's own default is 16 KiB.
MAX_HEAD_BYTES = 64 * 1024
_TOO_LARGE_BODY = (
    b'{"error":{"message":"The request line and headers exceed %d bytes.",'
    b'"type":"invalid_request_error","param":null,"code":"request_head_too_large"}}'
) % MAX_HEAD_BYTES
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_TOO_LARGE_BODY), _TOO_LARGE_BODY)
)
# Kept while the body arrives, per connection: a phone photo's base64 fits.
WHOLE_BODY_BYTES = 8 * 1024 * 1024
# Where the protocol leaves each request's ClientGone.
CLIENT_GONE_SCOPE = "vlmgw.client_gone"


class ClientGone:
    """Whether the client of one request has gone (its connection lost before the response
    completed), and what to call when it goes."""

    def __init__(self) -> None:
        self.gone = False
        self._callbacks: list[Callable[[], object]] = []

    def when_gone(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call `callback` once the client goes; the returned function undoes that."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def went(self) -> None:
        self.gone = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


class _HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline and whole bodies."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes of the current request's head received so far
        self._body_parts: list[bytes] = []  # the current request's body, not yet handed over
        self._body_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(cast(asyncio.Transport, transport))
        self._arm()  # a connection that never sends a byte is cut too

    def data_received(self, data: bytes) -> None:
        if self._between_requests():
            self._arm()  # the first bytes of a new request: its head is now on the clock
            self._head_bytes += len(data)
        super().data_received(data)
        if not self._between_requests():
            self._disarm()  # the head arrived: a request is being served
            self._head_bytes = 0
        elif self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is self.scope:
            self.scope[CLIENT_GONE_SCOPE] = ClientGone()  # type: ignore[literal-required]

    def on_body(self, body: bytes) -> None:
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # as uvicorn: bytes after a WebSocket upgrade are not a request body
        self._body_parts.append(body)
        self._body_bytes += len(body)
        if self._body_bytes > WHOLE_BODY_BYTES:
            self._hand_over()  # too large to keep: in pieces, with uvicorn's flow control

    def on_message_complete(self) -> None:
        if self._body_parts:
            self._hand_over()
        super().on_message_complete()

    def _hand_over(self) -> None:
        body = b"".join(self._body_parts)  # the one part itself when there is one
        self._body_parts.clear()
        self._body_bytes = 0
        cycle = self.cycle
        if cycle is not None and not cycle.body:
            # Not copied into uvicorn's bytearray: its `receive` passes exact bytes on as they are.
            cycle.body = body  # type: ignore[assignment]
            body = b""
        super().on_body(body)  # appends the rest, pauses reading past 64 KiB, wakes the app

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            gone = cycle.scope.get(CLIENT_GONE_SCOPE)
            if isinstance(gone, ClientGone):
                gone.went()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        cycle = self.cycle
        return cycle is None or bool(cycle.response_complete)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.close()


def head_deadline_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """The `http=` protocol class for uvicorn.Config: request heads must arrive within
    `header_timeout` seconds (settings.header_timeout)."""
    return type(
        "HeadDeadlineProtocol", (_HeadDeadlineProtocol,), {"header_timeout": header_timeout}
    )
