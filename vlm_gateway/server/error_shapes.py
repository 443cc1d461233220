"""Which envelope an error travels in, by route: Anthropic's on Anthropic's routes, OpenAI's
(`GatewayError.envelope()`) everywhere else. The door's middlewares and the app's exception
handlers both answer through `error_reply`, so each route has exactly one shape."""

from __future__ import annotations

from typing import Any

from vlm_gateway.core.errors import GatewayError, anthropic_error

ANTHROPIC_PATHS = frozenset({"/v1/messages"})


def error_reply(path: str | None, error: GatewayError) -> tuple[int, dict[str, Any]]:
    """(status, body) for `error` answered on `path` (None: not known, OpenAI's shape)."""
    if path in ANTHROPIC_PATHS:
        return anthropic_error(error)
    return error.status_code, error.envelope()
