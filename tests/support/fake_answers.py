"""The fake upstream's answers as bytes (tests/support/fake_upstream.py serves them): status
lines and heads, JSON bodies, OpenAI-shaped errors and stream events, built once where they
can be. The request body's "model" picks the behaviour: one of MODES."""

from __future__ import annotations

import json
import time

MODES = (
    "ok",
    "fault-500",
    "fault-400",
    "fault-stall",
    "fault-drop",
    "fault-badjson",
    "slow-stream",
)
CREATED = int(time.time())

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    411: "Length Required",
    500: "Internal Server Error",
}
ROUTES = {"/v1/chat/completions": True, "/v1/completions": False}  # path -> is chat


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def error(message: str, type_: str, param=None) -> bytes:
    return _dumps({"error": {"message": message, "type": type_, "param": param, "code": None}})


def response(status: int, body: bytes, close: bool, ctype: str = "application/json") -> bytes:
    connection = "Connection: close\r\n" if close else ""
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n{connection}\r\n"
    )
    return head.encode() + body


ERRORS = {  # mode -> (status, body)
    "fault-500": (500, error("fake internal error", "internal_error")),
    "fault-400": (
        400,
        error("fake bad request: max_tokens too large", "BadRequestError", "max_tokens"),
    ),
}
ERR_404 = error("not found", "NotFoundError")
ERR_BAD_REQUEST = error("request body is not a JSON object", "BadRequestError")
_MODELS = _dumps(
    {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": CREATED, "owned_by": "fake-upstream"}
            for m in MODES
        ],
    }
)
GET_BODIES = {"/health": b"", "/v1/models": _MODELS}
SSE_HEAD = {  # chunked on HTTP/1.1 keeps the connection reusable; HTTP/1.0 gets close-delimited
    True: b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    False: b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\n\r\n",
}
# A Content-Length the body never reaches, so the client sees a truncated response.
DROP_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 256\r\n\r\n"


def _usage(n: int) -> dict:
    return {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}


def full_body(chat: bool, model: str, n: int) -> bytes:
    out = {"message": {"role": "assistant", "content": "hello"}} if chat else {"text": "hello"}
    choices = [{"index": i, **out, "logprobs": None, "finish_reason": "stop"} for i in range(n)]
    return _dumps(
        {
            "id": "chatcmpl-fake" if chat else "cmpl-fake",
            "object": "chat.completion" if chat else "text_completion",
            "created": CREATED,
            "model": model,
            "choices": choices,
            "usage": _usage(n),
        }
    )


def stream_events(
    chat: bool, model: str, n: int, include_usage: bool, drop: bool = False
) -> list[bytes]:
    """The SSE events of one stream; with drop, only the two content events that precede the cut."""

    def event(choices: list, usage=None) -> bytes:
        obj = {
            "id": "chatcmpl-fake" if chat else "cmpl-fake",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": CREATED,
            "model": model,
            "choices": choices,
        }
        if include_usage:  # OpenAI puts "usage": null on every chunk before the usage chunk
            obj["usage"] = usage
        return b"data: " + _dumps(obj) + b"\n\n"

    def choice(i: int, text: str | None = None, role: bool = False, finish: str | None = None):
        if not chat:
            return {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta = {"role": "assistant", "content": text or ""} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}

    if drop:
        return [event([choice(0, "hel", role=chat)]), event([choice(0, "lo")])]
    steps = [{"text": "hel"}, {"text": "lo"}, {"finish": "stop"}]
    steps = [{"role": True}, *steps] if chat else steps
    events = [event([choice(i, **step)]) for step in steps for i in range(n)]
    if include_usage:
        events.append(event([], _usage(n)))
    events.append(b"data: [DONE]\n\n")
    return events


def frame(data: bytes, chunked: bool) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data
