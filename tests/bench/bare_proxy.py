"""The floor under any Python gateway on this machine: a proxy with no logic (a script).

    .venv/bin/python -m tests.bench.bare_proxy --upstream-port P --port Q [--mode proxy|relay]

`tests.bench.overhead --matrix --floor` serves it as one more column beside the gateway. It
forwards every POST body as it came to the upstream and the answer back, with nothing between:
no JSON parse, no validation, no keys, limits, metrics or log lines. What it costs per request is
what the event loop, the two sockets and the kernel's loopback TCP cost, before any gateway
code; the gateway's figures are read against it (docs/benchmarks-history.md, "The floor").

- `proxy`: the gateway's own structure at its leanest: the request is a task that awaits the
  upstream through the gateway's HTTP/1.1 pool (backends/openai_upstream/http1.py), then writes
  the answer in one `writelines`.
- `asgi`: the `proxy`'s forwarding as a bare ASGI app under uvicorn with the gateway's own
  HTTP protocol (server/http_protocol.py): what the server framework costs before any
  middleware, router or gateway code.
- `relay`: leaner than any gateway can be: no task, no future; the request's bytes go to a
  kept-alive upstream connection from the parser's callback, the upstream's bytes straight back
  to the client's socket, one client at a time per upstream connection.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import httptools
import uvicorn
import uvloop

from vlm_gateway.backends.openai_upstream.http1 import Http1Pool
from vlm_gateway.server.http_protocol import head_deadline_protocol

HOST = "127.0.0.1"
_HEALTH = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class _Server(asyncio.Protocol):
    """Collects one request at a time; `forward` decides what happens to it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body, self._body = b"".join(self._body), []
        assert self.transport is not None
        if self._parser.get_method() != b"POST":
            self.transport.write(_HEALTH)  # /health, /ready: for the harness's wait
            return
        self.forward(self._url, body)

    def forward(self, url: bytes, body: bytes) -> None:
        raise NotImplementedError


class ProxyServer(_Server):
    pool: Http1Pool

    def forward(self, url: bytes, body: bytes) -> None:
        asyncio.get_running_loop().create_task(self._answer(url.decode(), body))

    async def _answer(self, path: str, body: bytes) -> None:
        headers = {"content-type": "application/json"}
        response = await self.pool.post(path, headers, body, connect_timeout=5, read_timeout=60)
        try:
            data = await response.read()
        finally:
            response.release()  # back to the pool, kept alive
        head = b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        assert self.transport is not None
        self.transport.writelines((head % (response.status, len(data)), data))


class _Upstream(asyncio.Protocol):
    """One kept-alive connection to the upstream; its bytes go to whichever client it serves."""

    def __init__(self) -> None:
        self.client: asyncio.Transport | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.client is not None:
            self.client.write(data)


class RelayServer(_Server):
    upstream_port: int

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._upstream = _Upstream()
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_task(
            loop.create_connection(lambda: self._upstream, HOST, self.upstream_port)
        )

    def forward(self, url: bytes, body: bytes) -> None:
        head = b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
        head += b"content-length: %d\r\n\r\n"
        request = (head % (url, HOST.encode(), len(body)), body)
        self._upstream.client = self.transport
        if self._upstream.transport is None:  # the first request: connected once, then reused
            self._connecting.add_done_callback(lambda _: self._send(request))
        else:
            self._send(request)

    def _send(self, request: tuple[bytes, bytes]) -> None:
        assert self._upstream.transport is not None
        self._upstream.transport.writelines(request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._upstream.transport is not None:
            self._upstream.transport.close()


class AsgiProxy:
    def __init__(self, upstream_port: int) -> None:
        self.pool = Http1Pool(f"http://{HOST}:{upstream_port}", limit=256)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _send_answer(send, 200, b"ok")
            return
        parts, more = [], True
        while more:
            message = await receive()
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
        headers = {"content-type": "application/json"}
        response = await self.pool.post(
            scope["path"], headers, b"".join(parts), connect_timeout=5, read_timeout=60
        )
        try:
            data = await response.read()
        finally:
            response.release()
        await _send_answer(send, response.status, data)


async def _send_answer(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_asgi(upstream_port: int, port: int) -> None:
    config = uvicorn.Config(
        AsgiProxy(upstream_port),
        host=HOST,
        port=port,
        loop="uvloop",
        http=head_deadline_protocol(10),
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    uvicorn.Server(config).run()


async def serve(mode: str, upstream_port: int, port: int) -> None:
    if mode == "proxy":
        ProxyServer.pool = Http1Pool(f"http://{HOST}:{upstream_port}", limit=256)
        factory: type[_Server] = ProxyServer
    else:
        RelayServer.upstream_port = upstream_port
        factory = RelayServer
    server = await asyncio.get_running_loop().create_server(factory, HOST, port)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("proxy", "asgi", "relay"), default="proxy")
    args = parser.parse_args()
    if args.mode == "asgi":
        serve_asgi(args.upstream_port, args.port)
    else:
        uvloop.run(serve(args.mode, args.upstream_port, args.port))


if __name__ == "__main__":
    main()
