"""A fake OpenAI-compatible upstream with random faults, for the soak benchmark
(tests/bench/soak.py). One model, `m`; loopback only; standard library only.

    python -m tests.support.fault_upstream --port 8001 --p503 0.05 --preset 0.03 --delay 0.3

Each POST, at random (seeded): a 503 (`--p503`), a connection reset before any answer
(`--preset`), else an answer after `--delay` seconds: JSON, or a stream of `--events` events
`--pause` seconds apart. Answers say which replica sent them (`--name`) in their id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random

HOST = "127.0.0.1"
_MODELS = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
_503 = json.dumps({"error": {"message": "fake overload", "type": "server_error"}}).encode()


class FaultUpstream:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, path = head[0].split(" ")[:2]
        headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if method == "GET":
            ok = path.startswith("/v1/models")
            writer.write(_response(200 if ok else 404, _MODELS if ok else b"{}"))
            return True
        roll = self.rng.random()
        if roll < self.args.p503:
            writer.write(_response(503, _503))
            return True
        if roll < self.args.p503 + self.args.preset:
            writer.transport.abort()  # a reset, before any byte of an answer
            return False
        await asyncio.sleep(self.args.delay)
        request = json.loads(body)
        if request.get("stream"):
            await self._stream(writer)
        else:
            writer.write(_response(200, json.dumps(self._answer()).encode()))
        await writer.drain()
        return True

    def _answer(self) -> dict:
        message = {"role": "assistant", "content": "fine"}
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        answer = {"id": f"{self.args.name}-1", "object": "chat.completion", "created": 1}
        return answer | {"model": "m", "choices": [choice], "usage": usage}

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for i in range(self.args.events):
            if i:
                await asyncio.sleep(self.args.pause)
            delta = {"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": None}
            chunk = {"id": f"{self.args.name}-s", "object": "chat.completion.chunk"}
            chunk |= {"created": 1, "model": "m", "choices": [delta]}
            writer.write(_chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n"))
            await writer.drain()
        writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


def _response(status: int, body: bytes) -> bytes:
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
    return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _serve(args: argparse.Namespace) -> None:
    upstream = FaultUpstream(args)
    server = await asyncio.start_server(upstream.handle, HOST, args.port)
    print(f"http://{HOST}:{server.sockets[0].getsockname()[1]}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--p503", type=float, default=0.0)
    parser.add_argument("--preset", type=float, default=0.0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--events", type=int, default=8)
    parser.add_argument("--pause", type=float, default=0.02)
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
