"""check-config's plan: the listen address, the batch runner, and per model its image limits and
each replica's own lines (written by the replica's backend kind)."""

from __future__ import annotations

from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.config.plan import describe_plan


def plan(config: dict) -> list[str]:
    return describe_plan(settings_model().model_validate(config))


def test_no_models_says_so():
    lines = plan({"port": 8123, "data_dir": "/srv/vlm"})
    assert lines[0] == "listen: http://127.0.0.1:8123"
    assert lines[1].startswith("batches: data in /srv/vlm, up to 32 requests in flight")
    assert lines[2] == "models: 0 (none configured)"


def test_replicas_of_one_model_are_listed_under_it_with_their_kinds_lines():
    upstream = {"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}
    lines = plan(
        {
            "models": [
                {**upstream, "api_key": "sk-secret", "timeout": 30},
                {**upstream, "base_url": "http://127.0.0.2:9/v1", "upstream_model": "big"},
                {"name": "cap", "backend": "blip2", "model": "/weights", "max_batch_size": 8},
            ],
        }
    )
    text = "\n".join(lines)
    assert "sk-secret" not in text  # the key's presence is shown, never the key
    assert lines[2] == "models: 2"
    assert lines[3] == "- m (2 replicas, least in-flight first)"
    assert "    replica 0: backend openai -> http://127.0.0.1:9/v1" in lines
    assert "      api key: set" in lines and "      api key: none" in lines
    assert "      upstream model: big" in lines
    assert "      timeout: 30 s (connect 5 s), health check every 5 s" in lines
    assert "    replica 0: backend blip2, in this process -> /weights" in lines
    assert "      batches of up to 8, gathered for 5 ms" in lines


def test_image_limits_are_said_per_model_with_the_kinds_own_limit():
    lines = plan(
        {
            "images": {"max_image_bytes": 2 * 1024 * 1024},
            "models": [
                {"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
                {"name": "cap", "backend": "blip2", "model": "/weights"},
            ],
        }
    )
    images = [line for line in lines if line.startswith("    images:")]
    assert images == [
        "    images: at most 8 per request, 2 MiB and 40,000,000 pixels each",
        "    images: at most 1 per request, 2 MiB and 40,000,000 pixels each, "
        "shrunk to cover 224x224",
    ]


def test_inputs_and_media_limits_are_said_per_model():
    lines = plan(
        {
            "media": {"audio": {"max_bytes": 10 * 1024 * 1024}},
            "models": [
                {"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
                {
                    "name": "omni",
                    "backend": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "input_modalities": ["text", "video", "audio"],
                    "media": {"video": {"max_parts": 2, "max_seconds": 90}},
                },
            ],
        }
    )
    said = [line for line in lines if line.startswith(("    inputs:", "    media:"))]
    assert said == [
        "    inputs: text, image",  # nothing to say about video or audio it does not take
        "    inputs: text, video, audio",
        "    media: video up to 2 per request, 64 MiB, 90 s; audio up to 1 per request, 10 MiB, "
        "600 s",
    ]
