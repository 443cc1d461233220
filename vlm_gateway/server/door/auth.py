"""API keys: a pure ASGI middleware guarding every route except an explicit public list.

Keys are held only as SHA-256 digests and the presented key is compared with
`hmac.compare_digest` against every one of them (no early exit, so timing says nothing about
which key came close). The public list is matched exactly against `scope["path"]`, the path
the router itself dispatches on, never against the Host header or the raw path: `//v1/models`,
`/v1/../v1/models` and percent-encoded spellings are simply not public, so they need a key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from vlm_gateway.config.security import SecuritySettings
from vlm_gateway.core.errors import InvalidAPIKeyError
from vlm_gateway.core.metrics import AUTH
from vlm_gateway.server.door.reply import header, send_error
from vlm_gateway.server.door.request_metrics import note_refusal

log = logging.getLogger(__name__)

# Where the middleware leaves the caller's identity for the rate limiter (a digest prefix,
# never the key).
KEY_ID_SCOPE = "vlmgw.api_key_id"


def configured_key_digests(security: SecuritySettings) -> list[bytes]:
    """Digests of the keys from the config (VLMGW_API_KEYS is merged in there) and the file."""
    keys = [secret.get_secret_value() for secret in security.api_keys]
    if security.api_keys_file is not None:
        keys += _read_key_file(security.api_keys_file)
    return [_digest(key) for key in dict.fromkeys(key.strip() for key in keys) if key]


def _read_key_file(path: Path) -> list[str]:
    """One key per line; blank lines and '#' comments are skipped."""
    lines = path.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, key_digests: list[bytes], public_paths: Iterable[str]) -> None:
        self.app = app
        self._digests = list(key_digests)
        self._public = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or (
            scope["type"] == "http" and scope["path"] in self._public
        ):
            await self.app(scope, receive, send)
            return
        presented = _bearer_token(header(scope, b"authorization"))
        key_id = self._match(presented) if presented is not None else None
        if key_id is None:
            log.info(
                "refused %s %s: %s API key",
                scope.get("method", "WEBSOCKET"),
                scope["path"][:200],
                "missing" if presented is None else "invalid",
            )
            note_refusal(scope, AUTH)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await send_error(send, _refusal(presented))
            return
        scope[KEY_ID_SCOPE] = key_id
        await self.app(scope, receive, send)

    def _match(self, presented: str) -> str | None:
        digest = _digest(presented)
        matched = None
        for candidate in self._digests:
            if hmac.compare_digest(candidate, digest):
                matched = candidate
        return None if matched is None else "key-" + matched.hex()[:12]


def _bearer_token(value: bytes | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _refusal(presented: str | None) -> InvalidAPIKeyError:
    if presented is None:
        return InvalidAPIKeyError(
            "You didn't provide an API key. Send it in the Authorization header "
            "('Authorization: Bearer YOUR_KEY')."
        )
    return InvalidAPIKeyError("Incorrect API key provided.")
