"""Server-sent event framing, the same for every backend: `data: <json>\n\n`, then
`data: [DONE]\n\n`. An error after the stream began is one `data: {"error": ...}` event."""

from __future__ import annotations

from typing import Any

import orjson

from vlm_gateway.core.errors import GatewayError

DONE = b"data: [DONE]\n\n"


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    return frame(error.envelope())


def named_frame(event: str, payload: dict[str, Any]) -> bytes:
    """`event: <name>` then the data line: the Responses and Anthropic streams name each event."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
