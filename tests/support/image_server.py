"""A loopback HTTP server that serves image bytes, redirects and stalls, for fetcher tests.

    with ImageServer({"/cat.png": png}) as server:
        server.url("/cat.png")                   # 200 with the bytes
        server.url("/redirect?to=http://10.0.0.1/x")  # 302 to `to`
        server.url("/stall")                     # never answers (until stop)
        server.slow_files["/v.mp4"] = (data, 16384, gate)  # chunked: 16384 bytes, then waits
                                                           # for gate.set() to send the rest
Each GET is counted in `hits[path]`; its User-Agent and Host headers are recorded. 127.0.0.1 only.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"


class ImageServer:
    def __init__(
        self, files: dict[str, bytes] | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.files = dict(files or {})
        self.slow_files: dict[str, tuple[bytes, int, threading.Event]] = {}
        self.sent: Counter[str] = Counter()  # body bytes written for each slow file
        self.hits: Counter[str] = Counter()
        self.user_agents: list[str] = []
        self.hosts: list[str] = []  # the Host header of each GET
        self.sni: list[str | None] = []  # the TLS server name of each handshake
        self.scheme = "https" if tls else "http"
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer((HOST, 0), _Handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._httpd.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"{self.scheme}://{HOST}:{self.port}{path}"

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    """Answers for the ImageServer that owns its HTTP server (`self.self.owner.owner`)."""

    protocol_version = "HTTP/1.1"

    @property
    def owner(self) -> ImageServer:
        return self.server.owner  # type: ignore[attr-defined]

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.owner.hits[parts.path] += 1
        self.owner.user_agents.append(self.headers.get("user-agent", ""))
        self.owner.hosts.append(self.headers.get("host", ""))
        query = parse_qs(parts.query)
        if parts.path == "/redirect":
            self._answer(302, b"", {"location": query["to"][0]})
        elif parts.path == "/stall":
            self.owner._stop.wait(30)
        elif parts.path == "/endless":
            self._endless()
        elif parts.path in self.owner.slow_files:
            self._held(parts.path, *self.owner.slow_files[parts.path])
        elif parts.path in self.owner.files:
            self._answer(200, self.owner.files[parts.path], {"content-type": "image/png"})
        else:
            self._answer(404, b"not found", {})

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _held(self, path: str, data: bytes, before: int, gate: threading.Event) -> None:
        """Chunked, no length: `before` bytes, then nothing until the gate opens."""
        self.send_response(200)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            for start in range(0, len(data), 4096):
                if start >= before:
                    gate.wait(30)
                chunk = data[start : start + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                self.owner.sent[path] += len(chunk)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def _endless(self) -> None:
        """A chunked body that never ends and declares no length."""
        self.send_response(200)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        chunk = b"\0" * 65536
        try:
            while not self.owner._stop.is_set():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                time.sleep(0.001)
        except OSError:
            pass
