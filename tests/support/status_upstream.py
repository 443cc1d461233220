"""A minimal OpenAI-compatible upstream whose answer status the test sets (a second fake beside
fake_upstream.py, for failover): one model `m`, /v1/models always answering, so a replica
that fails every request is still "ready" as far as health checks go. Loopback only.

    with StatusUpstream(status=503) as bad, StatusUpstream() as good: ...

`status`: what POSTs get (200: an answer); `stall_s`: seconds to wait before the answer's
head (a timeout before headers); `held`: POSTs wait before the head until release(), for a
timeout or deadline that must act while the request is still waiting however slow the
machine is; `posts`: how many POSTs it received.
"""

from __future__ import annotations

import json
import threading
import time

from tests.support.loopback_http import LoopbackHTTPServer, QuietHandler

MODEL = "m"


def _answer(chat: bool) -> dict:
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    if chat:
        message = {"role": "assistant", "content": "fine"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return {"id": "c1", "object": "chat.completion", "created": 1, "model": MODEL,
                "choices": [choice], "usage": usage}  # fmt: skip
    choice = {"index": 0, "text": "fine", "finish_reason": "stop"}
    return {"id": "t1", "object": "text_completion", "created": 1, "model": MODEL,
            "choices": [choice], "usage": usage}  # fmt: skip


def _events(chat: bool) -> bytes:
    if chat:
        delta = {"index": 0, "delta": {"role": "assistant", "content": "fine"}}
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
                 "choices": [{**delta, "finish_reason": "stop"}]}  # fmt: skip
    else:
        chunk = {"id": "t1", "object": "text_completion", "created": 1, "model": MODEL,
                 "choices": [{"index": 0, "text": "fine", "finish_reason": "stop"}]}  # fmt: skip
    return b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"


class StatusUpstream:
    def __init__(self, status: int = 200, stall_s: float = 0.0, held: bool = False) -> None:
        self.status = status
        self.stall_s = stall_s
        self.held = held  # POSTs wait at a gate until release() (or the exit), not for a time
        self.posts = 0
        self._stopping = threading.Event()
        self._gate = threading.Event()
        upstream = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found", "type": "NotFound"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                upstream.posts += 1
                if upstream.stall_s:
                    upstream._stopping.wait(upstream.stall_s)
                if upstream.held:
                    upstream._gate.wait()
                chat = self.path.endswith("/chat/completions")
                if upstream.status != 200:
                    kind = "invalid_request_error" if upstream.status < 500 else "server_error"
                    error = {"message": f"fake {upstream.status}", "type": kind}
                    self._send(upstream.status, {"error": error})
                elif body.get("stream"):
                    self._send_raw(200, _events(chat), "text/event-stream")
                else:
                    self._send(200, _answer(chat))

            def _send(self, status: int, payload: dict) -> None:
                self._send_raw(status, json.dumps(payload).encode(), "application/json")

            def _send_raw(self, status: int, body: bytes, ctype: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the gateway gave up waiting (a stall past its timeout)

        self._server = LoopbackHTTPServer(Handler)
        self.base_url = self._server.base_url

    def release(self) -> None:
        """Let every held POST, and each later one, have its answer."""
        self._gate.set()

    def __enter__(self) -> StatusUpstream:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()
        self._gate.set()
        self._server.stop()
        time.sleep(0)  # let handler threads see the stop
