"""`DrainGuard` (vlm_gateway/server/drain.py) at the ASGI level: what a client gets from a
request cut at the end of shutdown_grace, and the `connection: close` of answers given while
draining. The end-to-end drain is in test_drain.py."""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from tests.support.polling import until
from vlm_gateway.server.drain import Drain, DrainGuard


def scope(path: str) -> Scope:
    return {"type": "http", "method": "POST", "path": path, "headers": []}


async def never_disconnects() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


class Held:
    """An app that starts an event stream (or not), then waits until cancelled."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.stream:
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        await asyncio.Event().wait()


async def cut(app: Held, path: str) -> list[Message]:
    drain = Drain()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    guard = DrainGuard(app, drain)
    task = asyncio.create_task(guard(scope(path), never_disconnects, send))
    await until(lambda: drain.in_flight() == 1 and (not app.stream or sent))
    drain.begin()
    assert drain.cut() == 1
    await task  # ends normally: the cut was answered
    assert drain.in_flight() == 0
    return sent


def test_a_request_cut_before_answering_gets_a_503_envelope():
    sent = asyncio.run(cut(Held(stream=False), "/v1/chat/completions"))
    start, body = sent
    assert start["status"] == 503 and (b"connection", b"close") in start["headers"]
    error = json.loads(body["body"])["error"]
    assert error["code"] == "shutting_down" and error["type"] == "service_unavailable"
    assert body.get("more_body", False) is False


def test_a_stream_cut_ends_with_an_error_event():
    sent = asyncio.run(cut(Held(stream=True), "/v1/chat/completions"))
    last = sent[-1]
    assert last["more_body"] is False
    event = json.loads(last["body"].decode().removeprefix("data: "))
    assert event["error"]["code"] == "shutting_down"


def test_an_anthropic_stream_cut_ends_with_its_error_event():
    sent = asyncio.run(cut(Held(stream=True), "/v1/messages"))
    head, data = sent[-1]["body"].decode().strip().split("\n")
    assert head == "event: error"
    assert json.loads(data.removeprefix("data: "))["type"] == "error"


def test_answers_given_while_draining_close_their_connection():
    drain = Drain()
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message: Message) -> None:
        sent.append(message)

    guard = DrainGuard(app, drain)
    asyncio.run(guard(scope("/health"), never_disconnects, send))
    assert sent[0]["headers"] == []
    drain.begin()
    asyncio.run(guard(scope("/health"), never_disconnects, send))
    assert sent[2]["headers"] == [(b"connection", b"close")]


def test_wrap_puts_the_drain_on_the_app_state():
    app = FastAPI()
    drain = Drain()
    assert isinstance(drain.wrap(app), DrainGuard) and app.state.drain is drain
