"""Settings for in-process tests, validated as the CLI validates a config file."""

from __future__ import annotations

from typing import Any

from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.config.settings import GatewaySettings

DEAD_UPSTREAM = "http://127.0.0.1:9/v1"  # the discard port: nothing answers there


def two_upstreams(**images: Any) -> GatewaySettings:
    """Model `wide` with the gateway's image limits, model `one` with its own (1 image, sides
    up to 64 px); `images` sets the gateway-wide `images:` section."""
    return settings_model().model_validate(
        {
            "images": images,
            "models": [
                {"name": "wide", "backend": "openai", "base_url": DEAD_UPSTREAM},
                {
                    "name": "one",
                    "backend": "openai",
                    "base_url": DEAD_UPSTREAM,
                    "images": {"max_images": 1, "max_image_side": 64},
                },
            ],
        }
    )


def upstream_entry(name: str, base_url: str, upstream_model: str) -> dict[str, Any]:
    """A `backend: openai` model entry: `name` served by `upstream_model` at `base_url` (the
    fake upstream's model names choose its behaviour, e.g. `fault-400`)."""
    return {
        "name": name,
        "backend": "openai",
        "base_url": base_url,
        "upstream_model": upstream_model,
    }


def omni_upstream(base_url: str, name: str = "ok") -> dict[str, Any]:
    """A `models:` entry for an OpenAI-compatible upstream (the fakes answer model "ok") that
    takes every modality: text, image, video and audio."""
    return {
        "name": name,
        "backend": "openai",
        "base_url": base_url,
        "upstream_model": "ok",
        "input_modalities": ["text", "image", "video", "audio"],
    }
