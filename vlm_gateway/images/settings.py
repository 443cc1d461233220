"""Image settings: the gateway-wide `images:` section and the per-model `models[].images:`
overrides, and the limits they add up to for one model. Every default here is the documented
one (README "Security settings", docs/security.md)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vlm_gateway.images.decode import ImageLimits

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
    # auto: the model's own input size (its kind says what it is); none; or WIDTHxHEIGHT.
    # Unset: the kind's default (auto for vllm and blip2, none for remote upstreams).
    resize: str | None = None

    @field_validator("resize")
    @classmethod
    def _resize(cls, value: str | None) -> str | None:
        if value is not None:
            parse_resize(value)  # ValueError says what is accepted
        return value


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
    # Processes that shrink images for models that resize (default: one per core; 0: a
    # thread in the gateway's own process instead).
    prepare_workers: Annotated[int, Field(ge=0, le=256)] | None = None

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


def parse_resize(value: str) -> tuple[int, int] | str:
    """`auto` and `none` as they are, `WIDTHxHEIGHT` as (width, height)."""
    if value in ("auto", "none"):
        return value
    match = re.fullmatch(r"([1-9]\d{0,4})x([1-9]\d{0,4})", value)
    if match is None:
        raise ValueError("must be auto, none or WIDTHxHEIGHT (e.g. 448x448)")
    return int(match[1]), int(match[2])


def limits_for(
    images: ImageSettings,
    overrides: ModelImageLimits | None,
    kind_max_images: int | None,
    resize: tuple[int, int] | None = None,
) -> ImageLimits:
    """One model's limits: the `images:` defaults, lowered to what its backend kind accepts
    (`kind_max_images`, e.g. 1 for BLIP-2), then its own `images:` overrides. `resize` is
    the input size the model's images are shrunk to cover (its `resize` setting, resolved)."""
    fields = overrides.model_dump(exclude_none=True) if overrides is not None else {}
    return ImageLimits(
        max_images=fields.get("max_images", kind_max_images or images.max_images),
        max_bytes=fields.get("max_image_bytes", images.max_image_bytes),
        max_pixels=fields.get("max_image_pixels", images.max_image_pixels),
        min_side=fields.get("min_image_side", images.min_image_side),
        max_side=fields.get("max_image_side", images.max_image_side),
        low_detail_side=images.low_detail_side,
        resize=resize,
    )
