"""The probe reads what a file is from its bytes: container, codec, length; and refuses what
is truncated, corrupt or not what it says it is."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.images import png_bytes
from tests.support.media import mp3_bytes, noise_wav, video_bytes, wav_bytes
from vlm_gateway.core.media_errors import MediaError
from vlm_gateway.media.probe import probe_media


def refused(data: bytes, modality: str, declared: str | None = None) -> str:
    with pytest.raises(MediaError) as caught:
        probe_media(data, modality, declared, "The part")  # type: ignore[arg-type]
    assert caught.value.code == f"invalid_{modality}"
    return caught.value.message


def test_an_mp4_says_its_container_codec_and_length():
    info = probe_media(video_bytes(seconds=2), "video", "mp4", "The part")
    assert "mp4" in info.container.split(",") and info.codecs == ("mpeg4",)
    assert info.seconds == pytest.approx(2.0, abs=0.2)


def test_h264_and_webm_are_read():
    h264 = probe_media(video_bytes(codec="libx264", size=(128, 96)), "video", "mp4", "x")
    webm = probe_media(video_bytes(fmt="webm", codec="libvpx"), "video", "webm", "x")
    assert h264.codecs == ("h264",) and webm.codecs == ("vp8",)


def test_a_wav_and_an_mp3_say_their_length():
    assert probe_media(wav_bytes(seconds=3), "audio", "wav", "x").seconds == pytest.approx(3.0)
    assert probe_media(mp3_bytes(seconds=2), "audio", "mp3", "x").seconds == pytest.approx(
        2.0, abs=0.3
    )


@pytest.mark.parametrize("faststart", [False, True])
def test_a_truncated_mp4_is_refused_wherever_its_index_is(faststart):
    clip = video_bytes(seconds=2, faststart=faststart)
    assert refused(clip[: len(clip) // 2], "video", "mp4")


def test_a_truncated_webm_is_refused():
    clip = video_bytes(seconds=2, fmt="webm", codec="libvpx")
    assert "truncated" in refused(clip[: len(clip) // 2], "video", "webm")


def test_noise_under_a_wav_header_is_refused():
    assert "could not be read" in refused(noise_wav(), "audio", "wav")


def test_mislabelled_bytes_are_refused():
    assert "declared as 'wav' but its bytes are mp3" in refused(mp3_bytes(), "audio", "wav")
    assert "declared as 'webm'" in refused(video_bytes(), "video", "webm")
    assert "still image" in refused(png_bytes(16, 16), "video", "mp4")


def test_a_file_without_the_modality_s_stream_is_refused():
    assert "no audio stream" in refused(video_bytes(), "audio")
    assert "no video stream" in refused(wav_bytes(), "video")


def test_no_declared_kind_checks_only_the_bytes():
    assert probe_media(wav_bytes(), "audio", None, "x").container == "wav"
    assert probe_media(wav_bytes(), "audio", "octet-stream", "x").container == "wav"


def test_an_mp4_whose_index_is_cut_short_is_refused():
    """Its stream is there but FFmpeg knows no codec for it (the index lost its codec box)."""
    clip = video_bytes(seconds=2)
    for cut in (100, 500, 900):
        assert refused(clip[:-cut], "video", "mp4")


_SAMPLES = {
    "mp4": (video_bytes(seconds=1, size=(32, 32)), "video"),
    "webm": (video_bytes(seconds=1, size=(32, 32), fmt="webm", codec="libvpx"), "video"),
    "wav": (wav_bytes(seconds=0.5), "audio"),
    "mp3": (mp3_bytes(seconds=0.5), "audio"),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(_SAMPLES)),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4),
    declared=st.sampled_from([None, "mp4", "webm", "wav", "mp3", "png"]),
)
def test_damaged_files_are_a_400_or_pass_never_anything_else(kind, cut, flips, declared):
    """Cut anywhere and with bytes flipped, every file is either read or refused with the
    modality's 400: never another exception (a 500)."""
    data, modality = _SAMPLES[kind]
    damaged = bytearray(data[: int(len(data) * cut)])
    for where, value in flips:
        if damaged:
            damaged[int(where * (len(damaged) - 1))] ^= value
    try:
        probe_media(bytes(damaged), modality, declared, "The part")  # type: ignore[arg-type]
    except MediaError as error:
        assert error.code == f"invalid_{modality}"
