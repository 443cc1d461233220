"""The request being served, as a context variable: its id (the `X-Request-Id` header), the
model it names and the name of its API key once those are known, and its usage (tokens,
images) for the access line. Set once per request by the server's request-id middleware
(and per batch line by the batch runner); read by the upstream client (it forwards the id), by
the log filter (every line about the request carries it) and by the replica pick (the key of
`routing: affinity`). asyncio tasks copy the context when they are created, so work a request
spawns sees its id, and background work started outside any request (health probes,
supervisors) sees none."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
# Safe in a header, a log line and a JSON string without escaping: ids, UUIDs, base64 tokens.
_ACCEPTED_ID = re.compile(rf"[A-Za-z0-9._:+/=-]{{1,{MAX_REQUEST_ID_CHARS}}}")


@dataclass
class RequestContext:
    request_id: str
    model: str | None = None  # filled in once the body has been parsed
    key: str | None = None  # the caller's key name (never the key itself), once known
    # Usage, for the access line: tokens from the answer's `usage`, images in the request.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    images: int = 0
    # The digest of its images and the text before them, for `routing: affinity` (set by the
    # image resolver, read by the replica pick); None: no images.
    affinity_key: int | None = None


_current: ContextVar[RequestContext | None] = ContextVar("vlmgw_request", default=None)


def new_request_id() -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex at a quarter of its cost (issue 14).
    return "req_" + os.urandom(16).hex()


def accepted_request_id(candidate: str | None) -> str | None:
    """The candidate if it is a usable id (1-128 characters of `A-Z a-z 0-9 . _ : + / = -`),
    else None: the caller then makes a new one rather than repeat unsafe text in logs."""
    if candidate is not None and _ACCEPTED_ID.fullmatch(candidate):
        return candidate
    return None


def current_request() -> RequestContext | None:
    return _current.get()


def current_request_id() -> str | None:
    context = _current.get()
    return context.request_id if context is not None else None


def note_model(model: str) -> None:
    """Record the model the current request asked for (for its access log line)."""
    context = _current.get()
    if context is not None:
        context.model = model


def note_key(name: str) -> None:
    """Record the name of the API key the current request came with."""
    context = _current.get()
    if context is not None:
        context.key = name


def note_usage(counts: Mapping[str, int]) -> None:
    """Record the request's token counts (`core.usage.token_counts` of its answer's usage)."""
    context = _current.get()
    if context is not None:
        context.prompt_tokens = counts.get("prompt_tokens", context.prompt_tokens)
        context.completion_tokens = counts.get("completion_tokens", context.completion_tokens)


def note_images(count: int) -> None:
    """Record how many images the current request carried once they were accepted."""
    context = _current.get()
    if context is not None:
        context.images = count


def note_affinity_key(key: int) -> None:
    """Record the current request's affinity key (images/resolve.py)."""
    context = _current.get()
    if context is not None:
        context.affinity_key = key


def current_affinity_key() -> int | None:
    context = _current.get()
    return context.affinity_key if context is not None else None


@contextlib.contextmanager
def bound_request(context: RequestContext) -> Iterator[RequestContext]:
    """Make `context` the current request for the code inside the block."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


# Headers for the upstream call being made in this context (the tracer's `traceparent`): set
# around one backend call, so health probes and image fetches never carry them.
_upstream_headers: ContextVar[Mapping[str, str] | None] = ContextVar(
    "vlmgw_upstream_headers", default=None
)


def current_upstream_headers() -> Mapping[str, str]:
    return _upstream_headers.get() or {}


@contextlib.contextmanager
def upstream_headers(headers: Mapping[str, str]) -> Iterator[None]:
    """Add `headers` to the upstream requests made inside the block."""
    token = _upstream_headers.set(headers)
    try:
        yield
    finally:
        _upstream_headers.reset(token)
