"""The access line: one per request once its response has ended, written by the door.

Method, path, status, duration, the key's name (`anonymous` without one; never the key), model
and the usage (tokens, images). Its fields are set on the record too, for the JSON format
(core/logs.py) and for handlers that read them. The record is made directly and handed to the
logger's handlers: `Logger.info` would look up the level twice, copy an `extra` dict key by key
and check each name against the record's own (issue 23: the access line was the largest part
of the door's cost per request).
"""

from __future__ import annotations

import logging

from starlette.types import Scope

from vlm_gateway.core.logs import ACCESS_LOGGER
from vlm_gateway.core.request_context import RequestContext

access_log = logging.getLogger(ACCESS_LOGGER)

_MAX_LOGGED_PATH = 300


def write_access_line(
    scope: Scope, context: RequestContext, status: int, elapsed_ms: float
) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    method: str = scope.get("method", "")
    path: str = scope["path"]
    query: bytes = scope.get("query_string", b"")
    if query:
        path += "?" + query.decode("latin-1")
    path = path[:_MAX_LOGGED_PATH]
    client: tuple[str, int] | None = scope.get("client")
    address = client[0] if client else "-"
    duration_ms = round(elapsed_ms, 1)
    message = f'{address} "{method} {path}" {status} {duration_ms:.1f} ms{_who_and_usage(context)}'
    # No args: the message is formatted here (a `%` in a path stays as it is).
    record = access_log.makeRecord(access_log.name, logging.INFO, "", 0, message, (), None)
    record.__dict__.update(
        request_id=context.request_id,
        model=context.model,
        key=context.key,
        status=status,
        duration_ms=duration_ms,
        method=method,
        path=path,
        client=address,
        prompt_tokens=context.prompt_tokens,
        completion_tokens=context.completion_tokens,
        images=context.images or None,
    )
    access_log.handle(record)


def _who_and_usage(context: RequestContext) -> str:
    """` key=NAME model=M prompt_tokens=P completion_tokens=C images=N`, each part only when
    known (images when the request had any)."""
    text = f" key={context.key}" if context.key else ""
    if context.model:
        text += f" model={context.model}"
    if context.prompt_tokens is not None:
        text += f" prompt_tokens={context.prompt_tokens}"
    if context.completion_tokens is not None:
        text += f" completion_tokens={context.completion_tokens}"
    if context.images:
        text += f" images={context.images}"
    return text
