"""`models[].images.resize`: auto by default for the kinds that know their model's input size,
none for remote upstreams, WIDTHxHEIGHT or none to override, said in /v1/models' limits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.support.settings import DEAD_UPSTREAM
from vlm_gateway.backends.kinds import settings_model


def resize_of(entry: dict):
    settings = settings_model().model_validate({"models": [{"name": "m", **entry}]})
    return settings.image_limits("m").resize


def test_defaults_per_kind(tiny_models, tmp_path):
    assert resize_of({"backend": "openai", "base_url": DEAD_UPSTREAM}) is None
    assert resize_of({"backend": "blip2", "model": str(tiny_models["blip2"])}) == (30, 30)
    assert resize_of({"backend": "blip2", "model": "Salesforce/blip2-opt-2.7b"}) == (224, 224)
    assert resize_of({"backend": "vllm", "model": str(tiny_models["llava"])}) == (30, 30)
    assert resize_of({"backend": "vllm", "model": str(tmp_path)}) is None  # no processor config
    transformers = {"backend": "transformers"}
    joycaption = str(tiny_models["llava-joycaption"])
    assert resize_of({**transformers, "model": joycaption}) == (30, 30)  # CLIP's shortest edge
    # Variable-resolution and tiling processors get images at their own size.
    assert resize_of({**transformers, "model": str(tiny_models["qwen2vl"])}) is None
    assert resize_of({**transformers, "model": str(tiny_models["idefics3"])}) is None


def test_explicit_settings_override_the_kind():
    upstream = {"backend": "openai", "base_url": DEAD_UPSTREAM}
    assert resize_of({**upstream, "images": {"resize": "448x336"}}) == (448, 336)
    blip2 = {"backend": "blip2", "model": "/weights"}
    assert resize_of({**blip2, "images": {"resize": "none"}}) is None
    assert resize_of({**blip2, "images": {"resize": "auto"}}) == (224, 224)


@pytest.mark.parametrize("value", ["big", "224", "0x224", "224x", "224X224", "-1x5"])
def test_bad_values_say_what_is_accepted(value):
    with pytest.raises(ValidationError) as caught:
        resize_of({"backend": "openai", "base_url": DEAD_UPSTREAM, "images": {"resize": value}})
    assert "auto, none or WIDTHxHEIGHT" in str(caught.value)


def test_models_say_their_resize_up_front():
    settings = settings_model().model_validate(
        {"models": [{"name": "m", "backend": "blip2", "model": "/weights"}]}
    )
    assert settings.image_limits("m").describe()["resize"] == "224x224"
