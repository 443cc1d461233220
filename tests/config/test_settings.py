"""Settings built from a config: each model's image limits (defaults, its kind's limit, its own
overrides)."""

from __future__ import annotations

from tests.support.settings import two_upstreams
from vlm_gateway.backends.kinds import settings_model

settings = two_upstreams


def test_per_model_overrides_inherit_the_gateway_defaults():
    config = settings(max_image_bytes=1000)
    wide, one = (entry.image_limits(config.images) for entry in config.models)
    assert (wide.max_images, wide.max_bytes, wide.max_side) == (8, 1000, None)
    assert (one.max_images, one.max_bytes, one.max_side) == (1, 1000, 64)


def test_blip2_models_take_one_image_unless_configured():
    config = settings_model().model_validate(
        {
            "models": [
                {"name": "b", "backend": "blip2", "model": "/m"},
                {"name": "b2", "backend": "blip2", "model": "/m", "images": {"max_images": 2}},
            ]
        }
    )
    assert [entry.image_limits(config.images).max_images for entry in config.models] == [1, 2]


def test_an_unknown_model_has_no_limits():
    assert settings().image_limits("absent") is None


def test_failover_on_defaults_to_the_server_errors_and_every_kind_has_it():
    config = settings_model().model_validate(
        {
            "models": [
                {"name": "o", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
                {"name": "s", "backend": "openai", "base_url": "http://x/v1", "failover_on": []},
                {"name": "b", "backend": "blip2", "model": "/m", "failover_on": [503]},
            ]
        }
    )
    assert config.failover_on("o") == {500, 502, 503, 504}
    assert config.failover_on("s") == frozenset()  # connection failures still fail over
    assert config.failover_on("b") == {503}
    assert config.failover_on("absent") == {500, 502, 503, 504}


def test_the_first_entry_of_a_model_decides_its_failover_on():
    first = {"name": "m", "backend": "openai", "base_url": "http://a/v1", "failover_on": [503]}
    second = {"name": "m", "backend": "openai", "base_url": "http://b/v1"}
    config = settings_model().model_validate({"models": [first, second]})
    assert config.failover_on("m") == {503}
