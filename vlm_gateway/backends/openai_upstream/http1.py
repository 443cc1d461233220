"""A small HTTP/1.1 client for the request path to one OpenAI-compatible upstream.

Why not aiohttp here: on this path aiohttp was the largest share of the gateway's CPU (36% of a
text request, 55% of a 450 KB image request; docs/benchmarks.md). This client does only what
the path needs, on an asyncio protocol with httptools (uvicorn's C parser) doing the parsing:
one host per pool, keep-alive, request bodies with Content-Length, responses with
Content-Length, chunked or close-delimited bodies, and three timeouts: connect, waiting for a
pooled connection, and "no byte from the upstream for `read_timeout` seconds" (never a cap on a
long stream that keeps sending). Health probes and metrics scrapes stay on aiohttp.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import cast
from urllib.parse import urlsplit

import httptools

# Above this many unread body bytes the socket is paused until the reader catches up.
_HIGH_WATER = 1 << 20
# uvicorn (and so vLLM) closes a connection idle for 5 s: one idle longer may be closing as we
# send, so it is not reused.
_IDLE_REUSE_S = 4.0


class UpstreamConnectError(OSError):
    """No connection could be made: refused, unreachable, name not resolved."""


class UpstreamDisconnected(ConnectionError):
    """The connection closed or broke before the answer was complete."""


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.done = False
        self.keep_alive = False
        self.got_bytes = False
        self.chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def begin(self) -> None:
        """Ready for the next request on this connection."""
        self._reset()
        self._parser = httptools.HttpResponseParser(self)

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not registered as an asyncio.Transport: no isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamDisconnected(f"invalid HTTP from the upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done:
            return
        if self.head_done and self._close_delimited():
            self.done = True  # a body without length or chunks ends where the connection does
            self._wake()
        else:
            self._fail(UpstreamDisconnected(_lost_reason(exc, self.head_done)))

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()

    # -- for the response ---------------------------------------------------------------------

    def take_chunks(self) -> list[bytes]:
        taken = list(self.chunks)
        self.chunks.clear()
        self._buffered = 0
        if self._paused and not self.closed and self.transport:
            self._paused = False
            self.transport.resume_reading()
        return taken

    async def wait(self, timeout: float) -> None:
        """Until something arrives (head, body, end, error) or `timeout` s pass in silence."""
        if self.error is not None:
            raise self.error
        waiter = self.loop.create_future()
        self._waiter = waiter
        timer = self.loop.call_later(timeout, _expire, waiter, timeout)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _close_delimited(self) -> bool:
        names = {name for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no answer for {timeout:g} s"))


def _lost_reason(exc: Exception | None, head_done: bool) -> str:
    where = "during the answer" if head_done else "before answering"
    return f"the upstream closed the connection {where}" + (f": {exc}" if exc else "")


class Http1Response:
    """An answer's head, then its body: `read()` it whole or iterate `chunks()`; `release()`
    always (a fully read answer returns its connection to the pool, anything else closes it)."""

    def __init__(self, pool: Http1Pool, connection: _Connection, read_timeout: float) -> None:
        self._pool = pool
        self._connection = connection
        self._read_timeout = read_timeout
        self.status = connection.status
        self.headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in connection.headers
        }
        self._released = False

    async def read(self) -> bytes:
        parts: list[bytes] = []
        async for chunk in self.chunks():
            parts.append(chunk)
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            for chunk in connection.take_chunks():
                yield chunk
            if connection.done:
                return
            await connection.wait(self._read_timeout)

    def __del__(self) -> None:
        # A stream dropped before its relay ever ran (the client left between the opening and
        # the first event) never reaches `release`: its connection is closed and its place
        # freed here, on the loop's thread, as aiohttp's responses do.
        if not self._released:
            self._released = True
            self._pool.discard_soon(self._connection)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        connection = self._connection
        if connection.done and connection.keep_alive and not connection.closed:
            self._pool.put_back(connection)
        else:
            self._pool.discard(connection)


class Http1Pool:
    """Keep-alive connections to the host and port of `base_url`, at most `limit` at once."""

    def __init__(self, base_url: str, *, limit: int) -> None:
        self.base_url = base_url
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = self.port == (443 if self._ssl else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_line = f"host: {host if default_port else f'{host}:{self.port}'}\r\n"
        self._limit = limit
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def post(
        self,
        path: str,
        headers: Mapping[str, str],
        body: bytes | Sequence[bytes | memoryview],
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> Http1Response:
        """Send the request; return once the answer's head has arrived. A reused connection
        that closes before any byte of an answer (the upstream closed it as we sent) is retried
        once on a new one: the upstream saw, at most, a request it did not answer. `body`: its
        bytes, or pieces of it to write one after the other (not joined: no copy)."""
        pieces = (body,) if isinstance(body, bytes) else tuple(body)
        head = self._head(path, headers, sum(len(piece) for piece in pieces))
        for attempt in range(2):
            connection, reused = await self._acquire(connect_timeout, read_timeout)
            try:
                return await self._exchange(connection, head, pieces, read_timeout)
            except UpstreamDisconnected:
                self.discard(connection)
                if not (reused and not connection.got_bytes and attempt == 0):
                    raise
            except BaseException:
                self.discard(connection)
                raise
        raise AssertionError("unreachable")

    async def _exchange(
        self,
        connection: _Connection,
        head: bytes,
        body: tuple[bytes | memoryview, ...],
        read_timeout: float,
    ) -> Http1Response:
        transport = connection.transport
        assert transport is not None
        # One write, so one segment for a small request: a syscall and a wake-up fewer.
        transport.writelines((head, *body))
        while not connection.head_done:
            await connection.wait(read_timeout)
        return Http1Response(self, connection, read_timeout)

    def _head(self, path: str, headers: Mapping[str, str], length: int) -> bytes:
        lines = [f"POST {self.prefix}{path} HTTP/1.1\r\n", self._host_line]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"content-length: {length}\r\n\r\n")
        return "".join(lines).encode("latin-1")

    # -- the pool -----------------------------------------------------------------------------

    async def _acquire(
        self, connect_timeout: float, wait_timeout: float
    ) -> tuple[_Connection, bool]:
        if self._closed:
            raise UpstreamConnectError("the upstream client is closed")
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < _IDLE_REUSE_S:
                connection.begin()
                return connection, True
            self.discard(connection)
        if self._open >= self._limit:
            await self._wait_for_room(wait_timeout)
            return await self._acquire(connect_timeout, wait_timeout)
        self._open += 1
        try:
            return await self._connect(connect_timeout), False
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                )
        except TimeoutError:
            raise TimeoutError(f"no connection within {timeout:g} s") from None
        except OSError as exc:
            raise UpstreamConnectError(str(exc) or type(exc).__name__) from exc
        # uvloop may return before it has called connection_made: take the transport here.
        connection.transport = transport
        return connection

    async def _wait_for_room(self, timeout: float) -> None:
        room = asyncio.get_running_loop().create_future()
        self._waiting.append(room)
        try:
            async with asyncio.timeout(timeout):
                await room
        except TimeoutError:
            if room.done() and not room.cancelled():
                self._wake_one()  # woken as the time ran out: the room goes to the next waiter
            raise TimeoutError(
                f"all {self._limit} connections to the upstream stayed busy for {timeout:g} s"
            ) from None
        finally:
            if room in self._waiting:
                self._waiting.remove(room)

    def put_back(self, connection: _Connection) -> None:
        if self._closed:
            self.discard(connection)
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        self._wake_one()

    def discard(self, connection: _Connection) -> None:
        """Close `connection` and free its place (once, however often it is called)."""
        if connection in self._idle:
            self._idle.remove(connection)
        if connection.transport is not None:
            connection.close()
            connection.transport = None
            self._open -= 1
            self._wake_one()

    def discard_soon(self, connection: _Connection) -> None:
        """`discard` from anywhere, a finalizer included: on the loop's thread."""
        loop = connection.loop
        if not loop.is_closed():
            loop.call_soon_threadsafe(self.discard, connection)

    def _wake_one(self) -> None:
        while self._waiting:
            room = self._waiting.popleft()
            if not room.done():
                room.set_result(None)
                return

    def close(self) -> None:
        self._closed = True
        for connection in list(self._idle):
            self.discard(connection)
