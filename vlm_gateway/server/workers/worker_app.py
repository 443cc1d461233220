"""What a worker process adds to the public app under `serve --workers N`.

- The Files and Batch API is forwarded to the supervisor's backplane, which alone owns the
  store and runs the batches (one runner, one SQLite writer). The caller's own key travels
  with the request, so the backplane answers as that tenant.
- `/v1/models` (the list, each card, and the admin-only `POST .../load` and `.../unload`) is
  forwarded too: the supervisor runs the models and owns their loading on demand
  (backends/ondemand/), so its cards say how they are, not how the worker reaches them.
- `GET /metrics` answers for the whole gateway: every worker's counters and histograms (their
  prometheus_client multiprocess files, summed) and the live state the supervisor reports
  (replica states, requests in flight at its backends, batches, vLLM's series).
- Rate limits are counted in the table the workers share (server/door/shared_limits.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import aiohttp
from fastapi import FastAPI
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlm_gateway.core.errors import UpstreamError
from vlm_gateway.core.metrics import CONTENT_TYPE
from vlm_gateway.core.request_context import REQUEST_ID_HEADER
from vlm_gateway.server.door.door import REQUEST_CONTEXT_SCOPE
from vlm_gateway.server.door.limits import SharedUsage
from vlm_gateway.server.door.reply import send_error
from vlm_gateway.server.extension import AppExtension
from vlm_gateway.server.state import state_of
from vlm_gateway.server.workers.backplane import LIVE_METRICS_PATH
from vlm_gateway.server.workers.plan import BackplaneLink

log = logging.getLogger(__name__)

_FORWARDED = ("/v1/files", "/v1/batches", "/v1/models")
# Hop-by-hop, or set again by the side that sends: never copied across.
_NOT_COPIED = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "upgrade",
        REQUEST_ID_HEADER.lower(),
    }
)
_FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600)
_SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=10)


def worker_extension(link: BackplaneLink, shared_usage: SharedUsage) -> AppExtension:
    def install(app: FastAPI) -> None:
        app.add_middleware(_ToBackplane, link=link)

    return AppExtension(install, shared_usage)


class _ToBackplane:
    """Forwards the Files and Batch API and answers /metrics, over one pooled client that
    lives as long as the app (closed at the lifespan's shutdown)."""

    def __init__(self, app: ASGIApp, link: BackplaneLink) -> None:
        self.app = app
        self._link = link
        self._client: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._closing_on_shutdown(receive), send)
            return
        path = scope["path"] if scope["type"] == "http" else ""
        if path == "/metrics" and scope["method"] == "GET":
            await self._metrics(scope, send)
        elif any(path == prefix or path.startswith(prefix + "/") for prefix in _FORWARDED):
            await self._forward(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _closing_on_shutdown(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self._client is not None:
                await self._client.close()
                self._client = None
            return message

        return wrapped

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
            )
        return self._client

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope.get("query_string", b"").decode("latin-1")
        url = self._link.url + scope["path"] + (f"?{query}" if query else "")
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name.decode("latin-1").lower() not in _NOT_COPIED
        ]
        context = scope.get(REQUEST_CONTEXT_SCOPE)
        if context is not None:
            headers.append((REQUEST_ID_HEADER, context.request_id))
        has_body = scope["method"] in ("POST", "PUT", "PATCH")
        try:
            async with self._session().request(
                scope["method"],
                url,
                headers=headers,
                data=_body(receive) if has_body else None,
                timeout=_FORWARD_TIMEOUT,
            ) as response:
                await _relay(response, send)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("forwarding %s to the supervisor failed: %s", scope["path"], exc)
            await send_error(send, UpstreamError("The gateway's supervisor did not answer."))

    async def _metrics(self, scope: Scope, send: Send) -> None:
        state = state_of(scope["app"])
        text = await self._supervisor_text()
        families = _Parsed(text)
        body = await asyncio.to_thread(state.metrics.render, [families])
        headers = [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _supervisor_text(self) -> str:
        """The supervisor's live families; none (and a warning) when it does not answer."""
        headers = {"authorization": f"Bearer {self._link.token}"}
        try:
            async with self._session().get(
                self._link.url + LIVE_METRICS_PATH, headers=headers, timeout=_SCRAPE_TIMEOUT
            ) as response:
                if response.status == 200:
                    return await response.text()
                log.warning("the supervisor's live metrics answered %s", response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("the supervisor's live metrics did not answer: %s", exc)
        return ""


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise aiohttp.ClientPayloadError("the client went away")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _relay(response: aiohttp.ClientResponse, send: Send) -> None:
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
        if name.lower() not in _NOT_COPIED
    ]
    if response.content_length is not None:
        headers.append((b"content-length", str(response.content_length).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    async for chunk in response.content.iter_chunked(1 << 16):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


class _Parsed:
    """Families parsed from the supervisor's text exposition."""

    def __init__(self, text: str) -> None:
        self._text = text

    def collect(self) -> Iterator[Metric]:
        yield from text_string_to_metric_families(self._text)
