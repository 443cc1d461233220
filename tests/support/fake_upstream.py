"""A fast, fault-injecting fake of an OpenAI-compatible server (vLLM-like), loopback only.

The request body's "model" picks the behaviour (see MODES), so one fake can stand behind many
gateway config entries. Used by the tests (``with FakeUpstream() as up: ...``) for what a real
vLLM won't do on demand, and by the latency benchmark as a fixed-response upstream:

    python -m tests.support.fake_upstream --port 8001

Standard library only (uvloop if importable): the benchmark subtracts this server's latency from
the gateway's, so per-request work is kept to parsing the head, one json.loads and one write of
cached bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading

try:
    import uvloop
except ImportError:  # optional: only makes the fake faster
    uvloop = None

from tests.support.fake_answers import (
    DROP_HEAD,
    ERR_404,
    ERR_BAD_REQUEST,
    ERRORS,
    GET_BODIES,
    MODES,
    ROUTES,
    SSE_HEAD,
    error,
    frame,
    full_body,
    response,
    stream_events,
)

HOST = "127.0.0.1"  # never anything else: the fake must not be reachable from outside
STALL_SECONDS = 30.0
SLOW_STREAM_PAUSE = 0.2


class FakeUpstream:
    """The fake server on its own event loop in a background thread.

    ``requests`` / ``request_headers`` / ``request_paths`` are live lists, one entry per POST,
    appended in step under a lock (headers first, so ``request_headers[i]`` exists once
    ``requests[i]`` does); header names are lower-cased; an unparsable body is recorded as None.
    GETs (health checks, /v1/models) are not recorded, so background polling can't shift indices.
    """

    def __init__(self, port: int = 0, record: bool = True):
        self.port = port
        self.record = record
        self.requests: list = []
        self.request_headers: list[dict[str, str]] = []
        self.request_paths: list[str] = []
        self.stream_disconnects = 0  # streams cut short because the client went away
        self.stall_disconnects = 0  # stalled requests the client gave up on (closed)
        self._lock = threading.Lock()
        self._conns: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self._cache: dict[tuple, bytes] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.request_headers.clear()
            self.request_paths.clear()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        """Start serving; after stop(), starts again on the same port ("upstream came back")."""
        if self._thread is not None:
            return self
        ready, failure = threading.Event(), []

        def on_ready(exc):
            failure.append(exc)
            ready.set()

        def run():
            loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.serve(on_ready))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure[0] is not None:
            self._thread.join(1)
            self._thread = None
            raise failure[0] if failure else RuntimeError("fake upstream didn't start in 10 s")
        return self

    def stop(self) -> None:
        """Close the listening socket and abort every open connection, mid-response or idle."""
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def serve(self, on_ready=None) -> None:
        """Serve on the running loop until stop(); on_ready(None or the bind error) once bound."""
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._handle, HOST, self.port)
        except OSError as exc:
            if on_ready is None:
                raise
            on_ready(exc)
            return
        self.port = server.sockets[0].getsockname()[1]
        if on_ready:
            on_ready(None)
        await self._stopping.wait()
        server.close()
        tasks = list(self._conns)
        for task, writer in list(self._conns.items()):
            writer.transport.abort()  # an RST/FIN now, not after the response: "upstream went down"
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    # -- HTTP --------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns[task] = writer
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError):
            pass  # the client went away or sent a malformed head: just drop the connection
        except asyncio.CancelledError:
            pass  # stop(): end quietly (asyncio logs a traceback for a cancelled handler task)
        finally:
            self._conns.pop(task, None)
            writer.close()

    async def _one_request(self, reader, writer) -> bool:
        """Serve one request; True to keep the connection open for the next."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # clean close between requests
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        http11 = version == "HTTP/1.1"
        keep = "close" not in connection if http11 else "keep-alive" in connection
        close = not keep
        path = target.split("?", 1)[0]

        if method == "GET":
            body = GET_BODIES.get(path)
            ok = body is not None
            writer.write(response(200, body, close) if ok else response(404, ERR_404, close))
            return keep
        if "chunked" in headers.get("transfer-encoding", ""):
            writer.write(response(411, error("send Content-Length", "BadRequestError"), True))
            return False
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        chat = ROUTES.get(path) if method == "POST" else None
        if chat is None:
            writer.write(response(404, ERR_404, close))
            return keep
        try:
            req = json.loads(body)
        except ValueError:
            req = None
        req = req if isinstance(req, dict) else None
        if self.record:
            with self._lock:
                self.request_headers.append(headers)
                self.request_paths.append(path)
                self.requests.append(req)
        if req is None:
            writer.write(response(400, ERR_BAD_REQUEST, close))
            return keep
        return await self._dispatch(req, chat, http11, keep, reader, writer)

    async def _dispatch(
        self, req: dict, chat: bool, http11: bool, keep: bool, reader, writer
    ) -> bool:
        model = req.get("model")
        model = model if isinstance(model, str) else "ok"
        mode = model if model in MODES else "ok"
        stream = req.get("stream") is True
        close = not keep
        if mode in ERRORS:  # vLLM answers errors as JSON even when a stream was asked for
            writer.write(response(*ERRORS[mode], close))
            return keep
        if mode == "fault-stall":
            try:  # ends early if the client gives up (its timeout) and closes
                await asyncio.wait_for(reader.read(), STALL_SECONDS)
                self.stall_disconnects += 1
            except TimeoutError:
                pass
            return False
        if mode == "fault-badjson":
            if not stream:
                writer.write(response(200, b'{"choices": [', close))
                return keep
            events = [b"data: {not json}\n\n", b"data: [DONE]\n\n"]
            return await self._stream(reader, writer, events, http11, keep)

        n = req.get("n")
        n = n if isinstance(n, int) and 1 <= n <= 128 else 1
        if mode == "fault-drop":
            if stream:
                await self._stream(
                    reader,
                    writer,
                    stream_events(chat, model, 1, False, drop=True),
                    http11,
                    keep,
                    drop=True,
                )
            else:
                writer.write(DROP_HEAD)
                await self._abort_after_flush(writer)
            return False
        opts = req.get("stream_options") if stream else None
        usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        if mode == "slow-stream" and stream:
            events = stream_events(chat, model, n, usage)
            return await self._stream(reader, writer, events, http11, keep, pause=SLOW_STREAM_PAUSE)
        # "ok": the whole response is cached as bytes, so a repeat costs a dict lookup and a write
        key = (chat, model, n, stream, usage, http11, close)
        data = self._cache.get(key)
        if data is None:
            if len(self._cache) > 1024:  # arbitrary model names mustn't grow it forever
                self._cache.clear()
            if stream:
                events = stream_events(chat, model, n, usage)
                data = SSE_HEAD[http11] + b"".join(frame(e, http11) for e in events)
                data += b"0\r\n\r\n" if http11 else b""
            else:
                data = response(200, full_body(chat, model, n), close)
            self._cache[key] = data
        writer.write(data)
        return keep and (http11 or not stream)

    async def _stream(self, reader, writer, events, chunked, keep, pause=0.0, drop=False) -> bool:
        writer.write(SSE_HEAD[chunked])
        for i, data in enumerate(events):
            if i and pause:
                await asyncio.sleep(pause)
            if reader.at_eof() or writer.is_closing():  # the client hung up mid-stream
                self.stream_disconnects += 1
                return False
            writer.write(frame(data, chunked))
            await writer.drain()
        if drop:
            await self._abort_after_flush(writer)
            return False
        if not chunked:
            return False  # close-delimited: the close ends the body
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep

    @staticmethod
    async def _abort_after_flush(writer) -> None:
        # abort() discards unsent bytes; let the kernel take them so the client sees the partial
        # response before the connection dies.
        await writer.drain()
        for _ in range(100):
            if writer.transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.001)
        writer.transport.abort()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible upstream, 127.0.0.1 only.")
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS pick (printed on start)")
    parser.add_argument("--record", action="store_true", help="keep request bodies (grows memory)")
    args = parser.parse_args(argv)
    up = FakeUpstream(port=args.port, record=args.record)

    def on_ready(exc):
        if exc is not None:
            raise SystemExit(f"fake upstream: cannot bind {HOST}:{args.port}: {exc}")
        print(f"fake upstream listening on {up.base_url}", flush=True)

    loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
    try:
        loop.run_until_complete(up.serve(on_ready))
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()


if __name__ == "__main__":
    main()
