"""The `security:` section: API keys and request limits at the door (docs/security.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

PositiveInt = Annotated[int, Field(ge=1)]
MB = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecuritySettings(_Section):
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

    @field_validator("public_paths")
    @classmethod
    def _absolute_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"{path!r} must start with '/' (paths are matched exactly)")
        return value
