"""Per-request frame and processor settings: what passes to vLLM, and a 400 naming the key for
anything outside the gateway's bounds."""

from __future__ import annotations

from typing import Any

import pytest

from tests.media.test_resolve import chat, gateway, refusal, resolve, video
from tests.support.media import data_url, video_bytes
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.media.request_kwargs import check_request_kwargs, requested_fps

TAKES = ("text", "image", "video", "audio")


def refused(extra: dict, modalities: tuple[str, ...] = TAKES) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        check_request_kwargs(extra, modalities, max_frames=64, max_pixels=1_000_000)
    return caught.value


def test_frames_fps_and_bounded_processor_arguments_pass():
    check_request_kwargs(
        {
            "media_io_kwargs": {"video": {"num_frames": 16}},
            "mm_processor_kwargs": {"fps": 2, "max_pixels": 200_000, "use_audio_in_video": True},
        },
        TAKES,
        max_frames=64,
        max_pixels=1_000_000,
    )


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"media_io_kwargs": {"video": {"num_frames": 65}}}, "media_io_kwargs.video.num_frames"),
        ({"media_io_kwargs": {"video": {"num_frames": True}}}, "media_io_kwargs.video.num_frames"),
        ({"media_io_kwargs": {"video": {"fps": 0}}}, "media_io_kwargs.video.fps"),
        ({"media_io_kwargs": {"video": {"backend": "pyav"}}}, "media_io_kwargs.video.backend"),
        ({"media_io_kwargs": {"audio": {"fps": 2}}}, "media_io_kwargs.audio.fps"),
        ({"media_io_kwargs": ["video"]}, "media_io_kwargs"),
        ({"mm_processor_kwargs": {"max_pixels": 10**9}}, "mm_processor_kwargs.max_pixels"),
        (
            {"mm_processor_kwargs": {"use_audio_in_video": "yes"}},
            "mm_processor_kwargs.use_audio_in_video",
        ),
        (
            {"mm_processor_kwargs": {"trust_remote_code": True}},
            "mm_processor_kwargs.trust_remote_code",
        ),
    ],
)
def test_anything_outside_the_bounds_is_a_400_naming_the_key(extra, param):
    error = refused(extra)
    assert (error.status_code, error.param) == (400, param)


def test_video_settings_for_a_model_without_video_are_refused():
    error = refused({"media_io_kwargs": {"video": {"num_frames": 4}}}, ("text", "audio"))
    assert error.param == "media_io_kwargs.video"


def test_the_rate_asked_for_is_found_in_either_field():
    assert requested_fps({"media_io_kwargs": {"video": {"fps": 3}}}) == 3.0
    assert requested_fps({"mm_processor_kwargs": {"fps": 1.5}}) == 1.5
    assert requested_fps({"media_io_kwargs": {"video": {"num_frames": 8}}}) is None


def managed(**media: Any) -> GatewaySettings:
    """A managed vLLM model taking video: the gateway launches it trusting per-request
    settings, so it holds them to its bounds."""
    entry = {"name": "managed", "backend": "vllm", "model": "/models/m", "input_modalities": TAKES}
    return settings_model().model_validate({"media": media, "models": [entry]})


def test_a_rate_that_makes_too_many_frames_for_the_video_s_length_is_refused():
    config = managed(video={"max_frames": 10})
    clip = video(data_url(video_bytes(seconds=3), "video/mp4"))
    resolve(config, chat("managed", clip, media_io_kwargs={"video": {"fps": 3}}))  # 9 frames
    error = refusal(config, chat("managed", clip, media_io_kwargs={"video": {"fps": 4}}))
    assert (error.param, error.code) == ("media_io_kwargs.video.fps", "too_many_frames")


def test_managed_vllm_holds_per_request_settings_to_bounds_a_remote_upstream_judges_its_own():
    extra = {"media_io_kwargs": {"video": {"num_frames": 100_000}}}
    error = refusal(managed(), chat("managed", **extra))
    assert error.param == "media_io_kwargs.video.num_frames"
    resolve(gateway(), chat("omni", **extra))  # forwarded as sent: its server decides
