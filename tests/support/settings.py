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
