"""The exact bytes a `backend: openai` upstream receives for a chat request parsed from a
client's body: an unchanged long data URL as the client sent it (written from the client's own
buffer), anything the gateway changed or had to parse whole serialised as before."""

from __future__ import annotations

import asyncio
import contextvars

import orjson

from tests.backends.openai_upstream.test_http1 import answer, read_request
from vlm_gateway.backends.openai_upstream.backend import OpenAIUpstreamBackend
from vlm_gateway.core.chat_body import LONG_DATA_URL_BYTES, loads_chat_body
from vlm_gateway.core.protocol import ChatCompletionRequest

URL = "data:image/png;base64,iVBORw0KGgo" + "Ab+/" * (LONG_DATA_URL_BYTES // 4)
CHANGED = "data:image/jpeg;base64,/9j/" + "Ab+/" * (LONG_DATA_URL_BYTES // 4)
REPLY = b'{"id":"x","object":"chat.completion","model":"up","choices":[]}'


def client_body(*urls: str) -> bytes:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    content = [{"type": "text", "text": "what?"}, *parts]
    # In the order the protocol model dumps its fields: the upstream body differs by `model`.
    return orjson.dumps({"messages": [{"content": content, "role": "user"}], "model": "m"})


async def forwarded(body: bytes, change_second: bool = False) -> bytes:
    """The body the upstream received when the gateway forwards `body` (parsed as the chat
    route does; with the second image replaced, as the resolver replaces what it changes)."""
    received: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        assert request is not None
        received.append(request.partition(b"\r\n\r\n")[2])
        writer.write(answer(REPLY))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = OpenAIUpstreamBackend("m", f"http://127.0.0.1:{port}/v1", None)  # type: ignore[arg-type]
    backend.upstream_model = "up"
    try:
        request = ChatCompletionRequest.model_validate(loads_chat_body(body))
        if change_second:
            request.messages[0].content[2].image_url.url = CHANGED  # type: ignore[union-attr]
        await backend.chat(request)
    finally:
        await backend.stop()
        server.close()
    return received[0]


def upstream_sees(*urls: str) -> bytes:
    return client_body(*urls).replace(b'"model":"m"', b'"model":"up"')


def run(body: bytes, change_second: bool = False) -> bytes:
    """In a context of its own, as each request is served in a task of its own."""
    return contextvars.Context().run(asyncio.run, forwarded(body, change_second))


def test_unchanged_data_urls_reach_the_upstream_exactly_as_sent() -> None:
    other = URL.replace("Ab+/", "Zz09", 1)
    assert run(client_body(URL, other)) == upstream_sees(URL, other)


def test_a_changed_data_url_is_serialised_and_its_neighbour_kept() -> None:
    assert run(client_body(URL, URL), change_second=True) == upstream_sees(URL, CHANGED)


def test_escaped_slashes_reach_the_upstream_unescaped() -> None:
    """`\\/` (PHP's json_encode): the string is not its bytes, so it is never copied as bytes."""
    escaped = client_body(URL).replace(b"/", b"\\/")
    assert b"\\/" in escaped
    sent = run(escaped)
    assert sent == upstream_sees(URL) and b"\\/" not in sent
