"""Media limits: the gateway-wide `media:` defaults, a model's own overrides on top."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vlm_gateway.media.settings import (
    MB,
    MediaSettings,
    ModelMediaLimits,
    media_limits_for,
    video_sampling,
)


def test_defaults_sit_near_vllm_s():
    limits = media_limits_for(MediaSettings(), None)
    assert (limits.video.max_bytes, limits.audio.max_bytes) == (64 * MB, 25 * MB)
    assert (limits.video.fetch_timeout, limits.audio.fetch_timeout) == (30.0, 10.0)
    assert limits.video.max_parts == limits.audio.max_parts == 1


def test_a_model_overrides_only_what_it_sets():
    gateway = MediaSettings.model_validate({"audio": {"max_seconds": 60}})
    own = ModelMediaLimits.model_validate({"audio": {"max_parts": 3}})
    audio = media_limits_for(gateway, own).audio
    assert (audio.max_parts, audio.max_seconds, audio.max_bytes) == (3, 60, 25 * MB)


def test_frame_sampling_comes_from_the_model_then_the_gateway():
    gateway = MediaSettings.model_validate({"video": {"fps": 2}})
    assert video_sampling(gateway, None) == {"fps": 2}
    own = ModelMediaLimits.model_validate({"video": {"num_frames": 16}})
    assert video_sampling(gateway, own) == {"num_frames": 16}  # one choice, not a mix
    assert video_sampling(MediaSettings(), None) == {}


def test_unknown_keys_and_non_positive_limits_are_errors():
    with pytest.raises(ValidationError):
        MediaSettings.model_validate({"video": {"frames": 3}})
    with pytest.raises(ValidationError):
        MediaSettings.model_validate({"audio": {"max_bytes": 0}})
