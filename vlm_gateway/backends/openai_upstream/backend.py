"""Backend `openai`: a remote OpenAI-compatible upstream (a `vllm serve` anywhere).

Requests are forwarded with `model` swapped for the upstream's name and answers come back
with the client's name restored. Streams are relayed event by event as they arrive. The
upstream's status is known before the gateway commits to a 200 stream, and every upstream
response is closed, also when the client goes away. Requests go through the backend's own small
HTTP/1.1 pool (http1.py: the request path's CPU); health probes through the app's aiohttp
session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp
import orjson
from pydantic import BaseModel

from vlm_gateway.backends.base import Backend, State
from vlm_gateway.backends.openai_upstream.http1 import (
    Http1Pool,
    Http1Response,
    UpstreamConnectError,
    UpstreamDisconnected,
)
from vlm_gateway.backends.openai_upstream.image_ids import add_image_uuids
from vlm_gateway.core.chat_body import dumps_chat_body
from vlm_gateway.core.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from vlm_gateway.core.protocol import ChatCompletionRequest, CompletionRequest
from vlm_gateway.core.request_context import (
    REQUEST_ID_HEADER,
    current_request_id,
    current_upstream_headers,
)
from vlm_gateway.core.sse import DONE, frame

log = logging.getLogger(__name__)

# Retry a lost upstream faster than the steady health interval, so it is back soon: at most
# every second, and ten times as often as the health checks (a worker's link to the supervisor,
# checked every second, learns a model is up within 0.1 s: server/workers/plan.py).
_RETRY_INTERVAL = 1.0
_RETRY_SHARE = 0.1


class OpenAIUpstreamBackend(Backend):
    kind = "openai"

    def __init__(
        self,
        name: str,
        base_url: str,
        client: aiohttp.ClientSession,
        *,
        upstream_model: str | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        health_interval: float = 5.0,
        max_connections: int = 1000,
        image_uuids: bool = False,
    ) -> None:
        super().__init__(name)
        self._image_uuids = image_uuids  # the upstream is vLLM: send images' ids (image_ids.py)
        self.base_url = base_url.rstrip("/")
        self.upstream_model = upstream_model
        self._configured_model = upstream_model
        self._client = client
        self._headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._timeout = upstream_timeout(timeout, connect_timeout)
        self._read_timeout = timeout
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._pool: Http1Pool | None = None
        self._probe_timeout = upstream_timeout(min(timeout, 5.0), connect_timeout)
        self._health_interval = health_interval
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._watcher = asyncio.create_task(self._watch(), name=f"watch-upstream-{self.name}")

    async def stop(self) -> None:
        if self._watcher:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._pool is not None:
            self._pool.close()
        await super().stop()

    async def _watch(self) -> None:
        while True:
            await self.probe()
            retry = min(_RETRY_INTERVAL, self._health_interval * _RETRY_SHARE)
            interval = self._health_interval if self.status.ready else retry
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(interval, self._health_interval))
            self._wake.clear()

    async def probe(self) -> None:
        """Ready when the upstream answers /models and lists the model we forward to."""
        try:
            async with self._client.get(
                self.base_url + "/models", headers=self._headers, timeout=self._probe_timeout
            ) as response:
                body = await response.read()
            if response.status >= 400:
                raise ValueError(f"status {response.status}")
            listed = [entry["id"] for entry in orjson.loads(body)["data"]]
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            self._mark_unavailable(f"upstream {self.base_url} not answering /models: {_why(exc)}")
            return
        wanted = self._configured_model or (listed[0] if listed else None)
        if wanted is None or wanted not in listed:
            self._mark_unavailable(
                f"upstream {self.base_url} does not list model {wanted!r} (it lists {listed})"
            )
            return
        self.upstream_model = wanted
        if not self.status.ready:
            log.info("model %s: upstream %s ready (%s)", self.name, self.base_url, wanted)
        self.set_status(State.READY)

    def _mark_unavailable(self, reason: str) -> None:
        if self.status.state is not State.UNAVAILABLE or self.status.reason != reason:
            log.warning("model %s: %s", self.name, reason)
        self.set_status(State.UNAVAILABLE, reason)

    # -- requests ---------------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest) -> dict[str, Any]:
        return await self._forward("/chat/completions", request)

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[bytes]:
        return await self._forward_stream("/chat/completions", request)

    async def completions(self, request: CompletionRequest) -> dict[str, Any]:
        return await self._forward("/completions", request)

    async def completions_stream(self, request: CompletionRequest) -> AsyncIterator[bytes]:
        return await self._forward_stream("/completions", request)

    async def _forward(self, path: str, request: BaseModel) -> dict[str, Any]:
        response = await self._post(path, request)
        try:
            with self._translate_errors():
                body = await response.read()
        finally:
            response.release()
        if response.status >= 400:
            raise upstream_status_failure(response.status, body, response.headers)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"The upstream for '{self.name}' answered with invalid JSON."
            ) from None
        if not isinstance(data, dict):
            raise UpstreamError(f"The upstream for '{self.name}' answered with a non-object.")
        data["model"] = self.name
        return data

    async def _post(self, path: str, request: BaseModel) -> Http1Response:
        """Send the request and wait for the answer's head. A failure until then means the
        upstream answered nothing: the error is `retryable` on another replica."""
        try:
            with self._translate_errors():
                # The caller reads the body, then releases the response.
                return await self._http().post(
                    path,
                    self._request_headers(),
                    self._body(request),
                    connect_timeout=self._connect_timeout,
                    read_timeout=self._read_timeout,
                )
        except GatewayError as exc:
            exc.retryable = True
            raise

    def _http(self) -> Http1Pool:
        """The pool for the current `base_url` (a managed vLLM gets a new port per launch)."""
        pool = self._pool
        if pool is None or pool.base_url != self.base_url:
            if pool is not None:
                pool.close()
            pool = self._pool = Http1Pool(self.base_url, limit=self._max_connections)
        return pool

    async def _forward_stream(self, path: str, request: BaseModel) -> AsyncIterator[bytes]:
        response = await self._post(path, request)
        if response.status >= 400:
            try:
                with self._translate_errors():
                    body = await response.read()
            finally:
                response.release()
            raise upstream_status_failure(response.status, body, response.headers)
        return self._relay(response)

    async def _relay(self, response: Http1Response) -> AsyncIterator[bytes]:
        saw_done = False
        pending = b""
        try:
            with self._translate_errors():
                # iter_any: whatever bytes have arrived, at once; events are split here.
                async for chunk in response.chunks():
                    pending += chunk.replace(b"\r\n", b"\n")
                    *events, pending = pending.split(b"\n\n")
                    for event in events:
                        out = self._rewrite_event(event)
                        saw_done = saw_done or out is DONE
                        if out:
                            yield out
            if not saw_done:
                raise UpstreamError(f"The upstream for '{self.name}' ended the stream early.")
        finally:
            # Back to the pool when read to the end; an unfinished stream (client gone,
            # error) closes the connection, which tells the upstream to stop generating.
            response.release()

    def _rewrite_event(self, event: bytes) -> bytes | None:
        if not event.startswith(b"data:"):
            return None  # comments and keep-alives: nothing for the client
        payload = event[5:].strip()
        if payload == b"[DONE]":
            return DONE
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"The upstream for '{self.name}' sent an invalid stream event."
            ) from None
        if isinstance(data, dict) and "model" in data:
            data["model"] = self.name
        return frame(data)

    def _request_headers(self) -> dict[str, str]:
        """The client's request id travels on (vLLM takes X-Request-Id as its own id), so one
        id names the request in the gateway's log and the upstream's."""
        request_id = current_request_id()
        extra = current_upstream_headers()
        if request_id is None and not extra:
            return self._headers
        headers = {**self._headers, **extra}
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = request_id
        return headers

    def _body(self, request: BaseModel) -> list[bytes | memoryview]:
        """The upstream's body, as pieces written one after the other (http1.py)."""
        payload = request.model_dump(mode="json", exclude_unset=True)
        payload["model"] = self.upstream_model
        if not isinstance(request, ChatCompletionRequest):
            return [orjson.dumps(payload)]
        if self._image_uuids:
            add_image_uuids(payload, request)
        # An unchanged data URL goes on as the client's bytes (model_dump keeps the very string).
        return dumps_chat_body(payload)

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except TimeoutError as exc:  # aiohttp's connect and read timeouts subclass it
            raise UpstreamTimeoutError(
                f"The upstream for '{self.name}' did not answer in time ({_why(exc)})."
            ) from exc
        except (aiohttp.ClientConnectorError, UpstreamConnectError) as exc:  # not up
            self._mark_unavailable(f"cannot connect to {self.base_url}: {_why(exc)}")
            self._wake.set()
            raise UpstreamError(
                f"The upstream for '{self.name}' is unreachable ({_why(exc)})."
            ) from exc
        except (aiohttp.ClientError, UpstreamDisconnected) as exc:  # cut short, bad HTTP
            raise UpstreamError(
                f"The connection to the upstream for '{self.name}' failed ({_why(exc)})."
            ) from exc


def upstream_timeout(timeout: float, connect_timeout: float) -> aiohttp.ClientTimeout:
    """`timeout` is seconds without a byte from the upstream (also before the first one), not
    a cap on the whole answer: a long stream that keeps sending is never cut. Waiting for a
    pooled connection is bounded by `timeout`, a new connection by `connect_timeout`."""
    return aiohttp.ClientTimeout(
        total=None, connect=timeout, sock_connect=connect_timeout, sock_read=timeout
    )


def upstream_status_error(status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
    """Upstream 4xx keep their status and words; 5xx become 502 (503 stays 503)."""
    message, error_type, param, code = _parse_error_body(body)
    if status < 500 or status == 503:
        retry_after = headers.get("retry-after")
        return GatewayError(
            message or f"The upstream answered {status}.",
            status_code=status,
            error_type=error_type
            or ("invalid_request_error" if status < 500 else "service_unavailable"),
            param=param,
            code=code,
            headers={"retry-after": retry_after} if retry_after else None,
        )
    return UpstreamError(f"The upstream failed with status {status}: {message or 'no message'}")


def upstream_status_failure(status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
    """`upstream_status_error`, carrying the upstream's status: whether another replica is
    tried is the model's `failover_on`, not this backend's call (backends/failover_rule.py)."""
    error = upstream_status_error(status, body, headers)
    error.upstream_status = status
    return error


def _parse_error_body(body: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    """Both OpenAI's `{"error": {...}}` and vLLM's older flat `{"message", "type", ...}`."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return (body[:500].decode(errors="replace").strip() or None), None, None, None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        data = data["error"]
    if not isinstance(data, dict):
        return None, None, None, None
    code = data.get("code")

    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) else None

    return text("message"), text("type"), text("param"), code if isinstance(code, str) else None


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
