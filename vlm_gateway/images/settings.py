"""Settings for what comes in through the door: image handling (`images:`), API keys and
request limits (`security:`), and the per-model image overrides (`models[].images:`).

Kept apart from gateway/settings.py so the per-backend classes there stay small; every default
here is the documented one (README "Security settings", docs/security.md)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

MB = 1024 * 1024
PositiveInt = Annotated[int, Field(ge=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelImageLimits(_Section):
    """Per-model overrides of the `images:` defaults; unset fields inherit them."""

    max_images: PositiveInt | None = None
    max_image_bytes: PositiveInt | None = None
    max_image_pixels: PositiveInt | None = None
    min_image_side: PositiveInt | None = None
    max_image_side: PositiveInt | None = None


class ImageSettings(_Section):
    # Limits (defaults for every model; BLIP-2 models default to max_images 1).
    max_images: PositiveInt = 8
    max_image_bytes: PositiveInt = 20 * MB
    max_image_pixels: PositiveInt = 40_000_000
    min_image_side: PositiveInt = 8
    max_image_side: PositiveInt | None = None
    low_detail_side: PositiveInt = 512
    # Fetching http(s) image URLs.
    fetch_timeout: Annotated[float, Field(gt=0)] = 5.0
    max_redirects: Annotated[int, Field(ge=0, le=20)] = 5
    user_agent: str = "vlm-gateway/0.1 (+image fetcher)"
    allowed_domains: list[str] = Field(default_factory=list)
    allow_private_networks: bool = False
    allowed_networks: list[str] = Field(default_factory=list)
    local_media_dir: Path | None = None
    cache_bytes: Annotated[int, Field(ge=0)] = 64 * MB
    cache_ttl: Annotated[float, Field(ge=0)] = 60.0

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad entry
        return value

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [domain.strip().lower().rstrip(".") for domain in value]


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
