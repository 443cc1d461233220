"""The request being served, as a context variable: its id (the `X-Request-Id` header) and the
model it names once that is known. Set once per request by the server's request-id middleware
(and per batch line by the batch runner); read by the upstream client (it forwards the id) and
by the log filter (every line about the request carries it). asyncio tasks copy the context
when they are created, so work a request spawns sees its id, and background work started
outside any request (health probes, supervisors) sees none."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
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


_current: ContextVar[RequestContext | None] = ContextVar("vlmgw_request", default=None)


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


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


@contextlib.contextmanager
def bound_request(context: RequestContext) -> Iterator[RequestContext]:
    """Make `context` the current request for the code inside the block."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
