"""The `security:` section: API keys and request limits at the door (docs/security.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

PositiveInt = Annotated[int, Field(ge=1)]
MB = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeySettings(_Section):
    """One named API key (a tenant): the key itself or only its SHA-256 digest (hex), so a
    config file need hold no secret; what it may call and how much (docs/security.md)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]
    key: SecretStr | None = None
    sha256: str | None = None
    models: list[str] | None = None  # the model names this key may call; None: all
    requests_per_minute: PositiveInt | None = None  # on top of the gateway-wide limit
    max_in_flight: PositiveInt | None = None  # on top of the gateway-wide limit
    admin: bool = False  # sees every tenant's files and batches; loads and unloads models

    @field_validator("name")
    @classmethod
    def _not_the_anonymous_owner(cls, value: str) -> str:
        if value == "anonymous":
            raise ValueError("'anonymous' is the owner of work from before keys had names")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("must be the 64 hex digits of the key's SHA-256 digest")
        return value.lower() if value is not None else None

    @model_validator(mode="after")
    def _one_secret(self) -> KeySettings:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of `key` and `sha256`")
        return self


class SecuritySettings(_Section):
    keys: list[KeySettings] = Field(default_factory=list)
    api_keys: list[SecretStr] = Field(default_factory=list)
    api_keys_file: Path | None = None
    public_paths: list[str] = Field(default_factory=lambda: ["/health", "/ready", "/metrics"])
    max_body_bytes: PositiveInt = 64 * MB
    requests_per_minute: PositiveInt | None = None
    max_in_flight_per_key: PositiveInt | None = None

    @field_validator("api_keys_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("keys")
    @classmethod
    def _unique_names(cls, value: list[KeySettings]) -> list[KeySettings]:
        names = [key.name for key in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"key names must be unique: {', '.join(repeated)}")
        return value

    @field_validator("public_paths")
    @classmethod
    def _absolute_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"{path!r} must start with '/' (paths are matched exactly)")
        return value
