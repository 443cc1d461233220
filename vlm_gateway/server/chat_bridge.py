"""What the translated APIs (Responses, Anthropic Messages) share: one request served through
the backend's chat call by the same `ModelRequest` as /v1/chat/completions (model access,
images through the same resolver, the replica pick, failover, tracing, disconnect handling),
and the chat
stream read back as chunk objects for their own event builders.

Each API translates its body into a `ChatCompletionRequest` plus `renames`: where each chat
parameter came from in its own body, so an image refused by the resolver is reported as
`input[0].content[1].image_url`, not as the chat field the client never sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Request, Response

from vlm_gateway.backends.base import Backend
from vlm_gateway.core.errors import GatewayError, UpstreamError
from vlm_gateway.core.protocol import ChatCompletionRequest, StreamOptions
from vlm_gateway.server.door.request_metrics import RequestTracker
from vlm_gateway.server.serving import ModelRequest

Chunks = AsyncIterator[dict[str, Any]]  # chat.completion.chunk objects, in order


@dataclass
class Translated:
    """A request of another API as a chat request, and where its parameters came from."""

    chat: ChatCompletionRequest
    renames: dict[str, str] = field(default_factory=dict)  # chat param prefix -> own param


async def serve_translated(
    request: Request,
    translated: Translated,
    answer: Callable[[dict[str, Any]], dict[str, Any]],
    events: Callable[[Chunks], AsyncIterator[bytes]],
) -> Response:
    """Serve `translated.chat`; `answer` turns the chat.completion into the API's own object,
    `events` turns the chat chunks into its own SSE events (and words its errors)."""
    chat = translated.chat
    served = ModelRequest(request, chat.model)
    served.admit()
    try:
        await served.resolve_images(chat)
    except GatewayError as exc:
        exc.param = renamed(exc.param, translated.renames)
        raise
    if chat.stream:
        chat.stream_options = StreamOptions(include_usage=True)  # usage for the final event
        tracker = served.tracker
        return await served.stream(
            lambda backend: _translated_stream(backend.chat_stream(chat), events, tracker)
        )

    async def call(backend: Backend) -> dict[str, Any]:
        return answer(await backend.chat(chat))

    return await served.answer(call)


async def _translated_stream(
    opening: Awaitable[AsyncIterator[bytes]],
    events: Callable[[Chunks], AsyncIterator[bytes]],
    tracker: RequestTracker | None,
) -> AsyncIterator[bytes]:
    """Opened before the route commits to a 200 (an early error stays a plain JSON error)."""
    framed = await opening
    return events(chat_chunks(_usage_seen(framed, tracker) if tracker else framed))


async def _usage_seen(
    framed: AsyncIterator[bytes], tracker: RequestTracker
) -> AsyncIterator[bytes]:
    """Show the request's metrics the chat stream's usage event: the translated events carry
    the counts under other names and nesting, which the tracker does not read."""
    async for blob in framed:
        if b'"prompt_tokens"' in blob:
            tracker.stream_event(blob)
        yield blob


async def chat_chunks(framed: AsyncIterator[bytes]) -> Chunks:
    """The chunk objects of a chat SSE stream; an `{"error": ...}` event is raised as the
    GatewayError it describes (the API's event builder words it in its own shape)."""
    pending = b""
    async for blob in framed:
        pending += blob
        *events, pending = pending.split(b"\n\n")
        for event in events:
            for line in event.splitlines():
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                yield _chunk(data)


def _chunk(data: bytes) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("The backend's stream carried an event that is not JSON.") from None
    if not isinstance(chunk, dict):
        raise UpstreamError("The backend's stream carried an event that is not an object.")
    error = chunk.get("error")
    if isinstance(error, Mapping):
        raise GatewayError(
            str(error.get("message") or "The backend's stream failed."),
            error_type=str(error.get("type") or "internal_error"),
            code=error.get("code") if isinstance(error.get("code"), str) else None,
        )
    return chunk


def renamed(param: str | None, renames: Mapping[str, str]) -> str | None:
    """'messages[1].content[0].image_url.url' -> 'input[0].content[0].image_url' (the longest
    chat prefix that has an origin wins)."""
    if param is None:
        return None
    for prefix in sorted(renames, key=len, reverse=True):
        if param == prefix or param.startswith(prefix + ".") or param.startswith(prefix + "["):
            return renames[prefix] + param[len(prefix) :]
    return param
