"""An OpenAI-compatible upstream (one model `m`, loopback) that holds its answers until the test
lets them go, for tests that act while a request is in flight (a drain, an in-flight limit):
a JSON answer is held before its head; a stream sends its head and first event, then holds
the rest.

    with HeldUpstream() as up:
        ... up.wait_arrivals(2) ...; up.release()
"""

from __future__ import annotations

import json
import threading

from tests.support.loopback_http import LoopbackHTTPServer, QuietHandler
from tests.support.polling import wait_until

MODEL = "m"
ANSWER = "the whole answer"


def _chunk(content: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
             "choices": [choice]}  # fmt: skip
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


FIRST_EVENT = _chunk("the whole ")
REST = _chunk("answer", "stop") + b"data: [DONE]\n\n"


def _answer() -> bytes:
    message = {"role": "assistant", "content": ANSWER}
    usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    return json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": MODEL,
                       "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                       "usage": usage}).encode()  # fmt: skip


class HeldUpstream:
    def __init__(self) -> None:
        self.arrivals = 0
        self._gate = threading.Event()
        self._lock = threading.Lock()
        upstream = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                body = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                self._head(200, "application/json", len(body))
                self.wfile.write(body.encode())

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with upstream._lock:
                    upstream.arrivals += 1
                try:
                    if request.get("stream"):
                        self._head(200, "text/event-stream", None)
                        self.wfile.write(FIRST_EVENT)
                        self.wfile.flush()
                        upstream._gate.wait()
                        self.wfile.write(REST)
                    else:
                        upstream._gate.wait()
                        body = _answer()
                        self._head(200, "application/json", len(body))
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the gateway cut the request

            def _head(self, status: int, ctype: str, length: int | None) -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                if length is None:  # a stream: to the end of the connection
                    self.send_header("connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("content-length", str(length))
                self.end_headers()

        self._server = LoopbackHTTPServer(Handler)
        self.base_url = self._server.base_url

    def wait_arrivals(self, count: int) -> None:
        wait_until(lambda: self.arrivals >= count, f"{count} requests at the upstream")

    def release(self) -> None:
        self._gate.set()

    def __enter__(self) -> HeldUpstream:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._gate.set()
        self._server.stop()
