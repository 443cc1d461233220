"""The gateway's HTTP/1.1 protocol (server/http_protocol.py) under a real uvicorn server: how a
request body reaches the app."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import orjson
import pytest
import uvicorn

from tests.support.polling import wait_until
from vlm_gateway.server import http_protocol
from vlm_gateway.server.http_protocol import head_deadline_protocol


class RecordingApp:
    """Answers each POST with the body pieces its `receive` calls returned."""

    def __init__(self) -> None:
        self.disconnects = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        pieces: list[int] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            pieces.append(len(message["body"]))
            if not message.get("more_body"):
                break
        body = orjson.dumps({"pieces": pieces})
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def serving(app) -> Iterator[uvicorn.Server]:
    """`app` under a real uvicorn server with the gateway's protocol, in a thread."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=head_deadline_protocol(10), log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "uvicorn started")
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def server() -> Iterator[tuple[uvicorn.Server, RecordingApp]]:
    app = RecordingApp()
    with serving(app) as running:
        yield running, app


def port_of(server: uvicorn.Server) -> int:
    return server.servers[0].sockets[0].getsockname()[1]


def post_in_pieces(port: int, body: bytes, piece: int) -> dict:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = f"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode())
        for start in range(0, len(body), piece):
            sock.sendall(body[start : start + piece])
        answer = b""
        while not answer.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    return orjson.loads(answer.partition(b"\r\n\r\n")[2])


def test_a_body_sent_in_many_pieces_reaches_the_app_whole(server):
    """uvicorn alone hands a 450 KB body over in 64 KiB pieces, each through every
    middleware; here it arrives as one."""
    body = bytes(range(256)) * 1800
    assert post_in_pieces(port_of(server[0]), body, 4096) == {"pieces": [len(body)]}


def test_a_body_past_the_whole_body_limit_goes_on_in_pieces(server, monkeypatch):
    monkeypatch.setattr(http_protocol, "WHOLE_BODY_BYTES", 100_000)
    body = b"x" * 1_000_000
    pieces = post_in_pieces(port_of(server[0]), body, 65536)["pieces"]
    assert sum(pieces) == len(body)
    assert len(pieces) > 1 and max(pieces) < len(body)


def test_two_requests_on_one_connection_each_get_their_own_body(server):
    port = port_of(server[0])
    first, second = b"a" * 70_000, b"b" * 5
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for body in (first, second):
            head = f"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body)
            answer = b""
            while not answer.endswith(b"}"):
                answer += sock.recv(65536)
            assert orjson.loads(answer.partition(b"\r\n\r\n")[2]) == {"pieces": [len(body)]}


def test_a_client_that_leaves_mid_body_is_a_disconnect_for_the_app(server):
    uvicorn_server, app = server
    with socket.create_connection(("127.0.0.1", port_of(uvicorn_server))) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\n\r\n" + b"z" * 500)
    wait_until(lambda: app.disconnects == 1, "the app told of the disconnect")


class WaitingApp:
    """Reads the whole body, then waits for its client to go, as told by the protocol."""

    def __init__(self) -> None:
        self.told: list[bool] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await receive()  # the whole body
        gone = scope[http_protocol.CLIENT_GONE_SCOPE]
        went = asyncio.Event()
        gone.when_gone(went.set)
        await went.wait()
        self.told.append(gone.gone)


def test_a_client_that_leaves_before_the_answer_fires_its_client_gone():
    app = WaitingApp()
    with serving(app) as uvicorn_server:
        with socket.create_connection(("127.0.0.1", port_of(uvicorn_server))) as sock:
            sock.sendall(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}")
        wait_until(lambda: app.told == [True], "the app told its client went")


def test_client_gone_calls_back_once_and_forgets_an_undone_callback():
    gone = http_protocol.ClientGone()
    calls: list[str] = []
    gone.when_gone(lambda: calls.append("kept"))
    undo = gone.when_gone(lambda: calls.append("undone"))
    undo()
    gone.went()
    gone.went()
    assert calls == ["kept"] and gone.gone
