"""API keys, checked by the door (door.py) on every route except an explicit public list; a
key found leaves its caller (vlm_gateway/server/door/keys.py) in the scope for what comes after.

The public list is matched exactly against `scope["path"]`, the path
the router itself dispatches on, never against the Host header or the raw path: `//v1/models`,
`/v1/../v1/models` and percent-encoded spellings are simply not public, so they need a key.
The key comes as `Authorization: Bearer KEY`; on Anthropic's routes also as `x-api-key: KEY`
(their clients' way). A refusal is worded in the route's envelope (server/error_shapes.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from starlette.types import Scope

from vlm_gateway.core.errors import InvalidAPIKeyError
from vlm_gateway.core.request_context import note_key
from vlm_gateway.server.door.keys import CALLER_SCOPE, KeyRing
from vlm_gateway.server.door.reply import header
from vlm_gateway.server.error_shapes import ANTHROPIC_PATHS

log = logging.getLogger(__name__)


class KeyCheck:
    def __init__(self, keys: KeyRing, public_paths: Iterable[str]) -> None:
        self._keys = keys
        self._public = frozenset(public_paths)

    def refusal(self, scope: Scope) -> InvalidAPIKeyError | None:
        """The 401 for a missing or unknown key on a guarded path; otherwise None, and the
        caller left in the scope (and its name on the request's log lines)."""
        if scope["type"] == "http" and scope["path"] in self._public:
            return None
        presented = _bearer_token(header(scope, b"authorization"))
        anthropic_route = scope["path"] in ANTHROPIC_PATHS
        if presented is None and anthropic_route:  # how Anthropic's clients send it
            presented = _plain_token(header(scope, b"x-api-key"))
        caller = self._keys.match(presented) if presented is not None else None
        if caller is None:
            log.info(
                "refused %s %s: %s API key",
                scope.get("method", "WEBSOCKET"),
                scope["path"][:200],
                "missing" if presented is None else "invalid",
            )
            return _refusal(presented, anthropic_route)
        scope[CALLER_SCOPE] = caller
        note_key(caller.name)  # the request's log lines carry the name, never the key
        return None


def _bearer_token(value: bytes | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _plain_token(value: bytes | None) -> str | None:
    token = value.decode("latin-1").strip() if value is not None else ""
    return token or None


def _refusal(presented: str | None, anthropic_route: bool = False) -> InvalidAPIKeyError:
    if presented is None:
        also = " or 'x-api-key: YOUR_KEY'" if anthropic_route else ""
        return InvalidAPIKeyError(
            "You didn't provide an API key. Send it in the Authorization header "
            f"('Authorization: Bearer YOUR_KEY'){also}."
        )
    return InvalidAPIKeyError("Incorrect API key provided.")
