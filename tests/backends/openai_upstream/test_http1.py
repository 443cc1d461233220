"""The request path's HTTP/1.1 client against scripted servers on 127.0.0.1: what the gateway
relies on when it forwards to an upstream (keep-alive, streamed bodies, the three timeouts,
connections that close under it)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from vlm_gateway.backends.openai_upstream.http1 import (
    Http1Pool,
    UpstreamConnectError,
    UpstreamDisconnected,
)


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in its own event loop (the project's tests use no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
JSON = {"content-type": "application/json"}


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A server running `handler` per request; yields its base URL and, per connection, how
    many requests it has read."""
    per_connection: list[int] = []

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(per_connection)
        per_connection.append(0)
        try:
            while await read_request(reader):
                per_connection[index] += 1
                await handler(reader, writer)
                if writer.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", per_connection
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def post(pool: Http1Pool, body: bytes | list = b"{}", timeout: float = 5.0) -> bytes:
    response = await pool.post("/chat", JSON, body, connect_timeout=5, read_timeout=timeout)
    try:
        return await response.read()
    finally:
        response.release()


def answers_then_closes(raw: bytes):
    """A server side that writes `raw` to each connection and closes it."""

    async def handle(reader, writer) -> None:
        writer.write(raw)
        await writer.drain()
        writer.close()

    return handle


@in_loop
async def test_requests_reuse_one_kept_alive_connection():
    async def ok(reader, writer):
        writer.write(answer(b'{"ok": true}'))

    async with serving(ok) as (url, per_connection):
        pool = Http1Pool(url, limit=8)
        for _ in range(3):
            assert await post(pool) == b'{"ok": true}'
        pool.close()
    assert per_connection == [3]


@in_loop
async def test_a_chunked_stream_arrives_piece_by_piece_before_it_ends():
    release = asyncio.Event()

    async def stream(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"6\r\ndata:1\r\n")
        await release.wait()  # the second piece only after the client saw the first
        writer.write(b"6\r\ndata:2\r\n0\r\n\r\n")

    async with serving(stream) as (url, _):
        pool = Http1Pool(url, limit=8)
        response = await pool.post("/chat", JSON, b"{}", connect_timeout=5, read_timeout=5)
        assert response.status == 200
        pieces = []
        async for chunk in response.chunks():
            pieces.append(chunk)
            release.set()
        response.release()
        pool.close()
    assert pieces == [b"data:1", b"data:2"]


@in_loop
async def test_a_body_without_length_ends_with_the_connection():
    close_delimited = answers_then_closes(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
    async with serving(close_delimited) as (url, per_connection):
        pool = Http1Pool(url, limit=8)
        assert await post(pool) == b"all of it"
        assert await post(pool) == b"all of it"  # on a new connection
        pool.close()
    assert per_connection == [1, 1]


@pytest.mark.parametrize(
    "sent",
    [b"", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"],
    ids=["nothing", "head and half the body"],
)
@in_loop
async def test_silence_from_the_upstream_times_out(sent):
    async def sends_then_stalls(reader, writer):
        writer.write(sent)
        await asyncio.sleep(30)

    async with serving(sends_then_stalls) as (url, _):
        pool = Http1Pool(url, limit=8)
        with pytest.raises(TimeoutError):
            await post(pool, timeout=0.2)
        pool.close()


@in_loop
async def test_a_kept_alive_connection_that_dies_unanswered_is_retried_on_a_new_one():
    """The server's idle timeout racing the client: the request goes out on a kept-alive
    connection just as the server closes it. Retried once on a fresh connection."""
    connections = 0

    async def one_answer_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(answer(b"fresh"))  # says keep-alive...
        await read_request(reader)  # ...but hangs up on the next request unanswered
        writer.close()

    server = await asyncio.start_server(one_answer_per_connection, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    pool = Http1Pool(url, limit=8)
    assert await post(pool) == b"fresh"
    assert await post(pool) == b"fresh"
    pool.close()
    server.close()
    assert connections == 2


@in_loop
async def test_a_server_that_closes_mid_body_is_a_disconnect():
    cuts = answers_then_closes(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
    async with serving(cuts) as (url, _):
        pool = Http1Pool(url, limit=8)
        with pytest.raises(UpstreamDisconnected, match="during the answer"):
            await post(pool)
        pool.close()


@in_loop
async def test_garbage_instead_of_http_is_a_disconnect():
    async def garbage(reader, writer):
        writer.write(b"SMTP ready\r\n\r\n")

    async with serving(garbage) as (url, _):
        pool = Http1Pool(url, limit=8)
        with pytest.raises(UpstreamDisconnected, match="invalid HTTP"):
            await post(pool)
        pool.close()


@in_loop
async def test_nothing_listening_is_a_connect_error():
    async with serving(lambda reader, writer: asyncio.sleep(0)) as (url, _):
        pass  # the port is closed again
    pool = Http1Pool(url, limit=8)
    with pytest.raises(UpstreamConnectError):
        await post(pool)


@in_loop
async def test_a_response_left_unread_closes_its_connection():
    gone = asyncio.Event()

    async def streams_until_gone(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:  # an upstream generating until the client hangs up
                writer.write(b"4\r\ntick\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            gone.set()

    async with serving(streams_until_gone) as (url, _):
        pool = Http1Pool(url, limit=8)
        response = await pool.post("/chat", JSON, b"{}", connect_timeout=5, read_timeout=5)
        async for _ in response.chunks():
            break
        response.release()
        await asyncio.wait_for(gone.wait(), 10)  # bounded so a regression fails, not hangs
        pool.close()


@in_loop
async def test_requests_beyond_the_limit_wait_for_a_free_connection():
    hold = asyncio.Event()

    async def held(reader, writer):
        await hold.wait()
        writer.write(answer(b"done"))

    async with serving(held) as (url, per_connection):
        pool = Http1Pool(url, limit=1)
        first = asyncio.create_task(post(pool))
        second = asyncio.create_task(post(pool))
        await asyncio.sleep(0.05)
        assert len(per_connection) == 1  # the second waits instead of opening another
        hold.set()
        assert await first == b"done"
        assert await second == b"done"
        pool.close()
    assert per_connection == [2]


@in_loop
async def test_waiting_for_a_connection_is_bounded_by_the_timeout():
    async def never(reader, writer):
        await asyncio.sleep(30)

    async with serving(never) as (url, _):
        pool = Http1Pool(url, limit=1)
        first = asyncio.create_task(post(pool, timeout=30))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError, match="busy"):
            await post(pool, timeout=0.2)
        first.cancel()
        pool.close()


@in_loop
async def test_a_header_value_with_a_line_break_is_refused():
    pool = Http1Pool("http://127.0.0.1:9/v1", limit=1)
    with pytest.raises(ValueError, match="line break"):
        await pool.post(
            "/chat", {"x-request-id": "a\r\nevil: 1"}, b"{}", connect_timeout=1, read_timeout=1
        )


@in_loop
async def test_a_response_dropped_unreleased_frees_its_connection():
    """A stream abandoned before its relay ran (the client left at once) must not keep its
    connection: with a limit of one, the next request would wait forever."""

    async def ok(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\ntick\r\n")

    async with serving(ok) as (url, per_connection):
        pool = Http1Pool(url, limit=1)
        response = await pool.post("/chat", JSON, b"{}", connect_timeout=5, read_timeout=5)
        del response  # neither read nor released
        opened = await pool.post("/chat", JSON, b"{}", connect_timeout=5, read_timeout=5)
        opened.release()
        pool.close()
    assert len(per_connection) == 2


@in_loop
async def test_a_body_in_pieces_arrives_as_their_concatenation():
    received: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_request(reader) or b"")
        writer.write(answer(b"{}"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    pool = Http1Pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", limit=1)
    try:
        pieces = [b'{"url":', memoryview(b'..."data:x"...')[3:11], b"}"]
        assert await post(pool, pieces) == b"{}"
    finally:
        pool.close()
        server.close()
    head, _, body = received[0].partition(b"\r\n\r\n")
    assert body == b'{"url":"data:x"}' and head.endswith(b"\r\ncontent-length: 16")
