"""Who is calling: the configured API keys as tenants (`Caller`), and the key ring that finds
the caller for a presented key.

Keys are held only as SHA-256 digests, and a presented key is compared with
`hmac.compare_digest` against every one of them (no early exit, so timing says nothing about
which key came close). Keys are never logged or shown; names are."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from starlette.types import Scope

from vlm_gateway.config.security import KeySettings, SecuritySettings

# Where the key middleware leaves the caller for everything after it.
CALLER_SCOPE = "vlmgw.caller"


@dataclass(frozen=True)
class Caller:
    """A tenant: the name its files, batches, logs and metrics carry, and what it may do."""

    name: str
    admin: bool = False  # sees every tenant's files and batches; loads and unloads models
    models: frozenset[str] | None = None  # the models it may call; None: all
    requests_per_minute: int | None = None
    max_in_flight: int | None = None

    def may_call(self, model: str) -> bool:
        return self.models is None or model in self.models

    def may_see(self, owner: str) -> bool:
        """Whether an object owned by `owner` exists for this caller."""
        return self.admin or owner == self.name


# The one owner when no keys are configured; also the owner of files and batches stored
# before keys had names (docs/security.md).
ANONYMOUS = Caller("anonymous")


def caller_of(scope: Scope) -> Caller:
    caller = scope.get(CALLER_SCOPE)
    return caller if isinstance(caller, Caller) else ANONYMOUS


class KeyRing:
    def __init__(self, entries: list[tuple[bytes, Caller]]) -> None:
        self._entries = entries

    @classmethod
    def from_settings(cls, security: SecuritySettings) -> KeyRing:
        entries = [(_key_digest(key), _caller(key)) for key in security.keys]
        plain = [secret.get_secret_value() for secret in security.api_keys]
        if security.api_keys_file is not None:
            plain += _read_key_file(security.api_keys_file)
        for key in dict.fromkeys(key.strip() for key in plain):
            if key:
                digest = _digest(key)
                entries.append((digest, Caller("key-" + digest.hex()[:12])))
        return cls(entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def names(self) -> list[str]:
        return [caller.name for _, caller in self._entries]

    def caller_named(self, name: str) -> Caller:
        """Who an owner's name stands for, for work done later without a request (the batch
        runner runs a batch as its owner). With no keys configured every owner may call every
        model, as every request may. `anonymous` owns what was accepted before keys had names:
        it goes on running with every model (nothing accepted is lost), though only admins
        see it. A name no longer configured may call no model."""
        if not self._entries or name == ANONYMOUS.name:
            return Caller(name)
        for _, caller in self._entries:
            if caller.name == name:
                return caller
        return Caller(name, models=frozenset())

    def match(self, presented: str) -> Caller | None:
        digest = _digest(presented)
        matched = None
        for candidate, caller in self._entries:
            if hmac.compare_digest(candidate, digest):
                matched = caller
        return matched


def _caller(key: KeySettings) -> Caller:
    return Caller(
        key.name,
        admin=key.admin,
        models=frozenset(key.models) if key.models is not None else None,
        requests_per_minute=key.requests_per_minute,
        max_in_flight=key.max_in_flight,
    )


def _key_digest(key: KeySettings) -> bytes:
    if key.sha256 is not None:
        return bytes.fromhex(key.sha256)
    assert key.key is not None  # the settings hold exactly one of the two
    return _digest(key.key.get_secret_value())


def _read_key_file(path: Path) -> list[str]:
    """One key per line; blank lines and '#' comments are skipped."""
    lines = path.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
