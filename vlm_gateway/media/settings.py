"""Video and audio settings: the gateway-wide `media:` section, the per-model `models[].media:`
overrides, and the limits they add up to for one model. Fetching (allow-lists, private
networks, redirects) and `file:` URLs (`images.local_media_dir`) follow the `images:` section:
one SSRF-safe fetcher serves every modality. Defaults sit near vLLM's own (docs/media.md)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MB = 1024 * 1024
Modality = Literal["video", "audio"]
MODALITIES: tuple[Modality, ...] = ("video", "audio")
PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AudioSettings(_Section):
    max_parts: PositiveInt = 1  # per request
    max_bytes: PositiveInt = 25 * MB  # vLLM: VLLM_MAX_AUDIO_CLIP_FILESIZE_MB
    max_seconds: PositiveFloat = 600.0  # vLLM: VLLM_MAX_AUDIO_DECODE_DURATION_S
    fetch_timeout: PositiveFloat = 10.0  # vLLM: VLLM_AUDIO_FETCH_TIMEOUT


class VideoSettings(_Section):
    max_parts: PositiveInt = 1
    max_bytes: PositiveInt = 64 * MB
    max_seconds: PositiveFloat = 600.0
    fetch_timeout: PositiveFloat = 30.0  # vLLM: VLLM_VIDEO_FETCH_TIMEOUT
    # The most frames a request may have sampled from one video (its `media_io_kwargs`
    # num_frames, or fps times the video's length): vLLM trusts what the gateway lets through.
    max_frames: PositiveInt = 128
    # Frames vLLM samples from each video when a request does not say (`media_io_kwargs`):
    # a count, or a rate; unset: vLLM's own default (32 frames). Managed vLLM only.
    num_frames: PositiveInt | None = None
    fps: PositiveFloat | None = None


class MediaSettings(_Section):
    video: VideoSettings = Field(default_factory=VideoSettings)
    audio: AudioSettings = Field(default_factory=AudioSettings)


class ModelAudioLimits(_Section):
    """Per-model overrides; unset fields inherit the `media:` section's."""

    max_parts: PositiveInt | None = None
    max_bytes: PositiveInt | None = None
    max_seconds: PositiveFloat | None = None
    fetch_timeout: PositiveFloat | None = None


class ModelVideoLimits(ModelAudioLimits):
    max_frames: PositiveInt | None = None
    num_frames: PositiveInt | None = None
    fps: PositiveFloat | None = None


class ModelMediaLimits(_Section):
    video: ModelVideoLimits | None = None
    audio: ModelAudioLimits | None = None


@dataclass(frozen=True)
class ModalityLimits:
    max_parts: int
    max_bytes: int
    max_seconds: float
    fetch_timeout: float
    max_frames: int | None = None  # video only


@dataclass(frozen=True)
class MediaLimits:
    video: ModalityLimits
    audio: ModalityLimits

    def of(self, modality: Modality) -> ModalityLimits:
        return self.video if modality == "video" else self.audio


def media_limits_for(media: MediaSettings, overrides: ModelMediaLimits | None) -> MediaLimits:
    """One model's limits: the `media:` defaults, then its own overrides."""

    def merged(modality: Modality) -> ModalityLimits:
        defaults = getattr(media, modality)
        own = getattr(overrides, modality, None) if overrides is not None else None
        own_fields = own.model_dump(exclude_none=True) if own is not None else {}
        names = [field.name for field in fields(ModalityLimits)]
        values: dict[str, Any] = {
            key: own_fields.get(key, getattr(defaults, key, None)) for key in names
        }
        return ModalityLimits(**values)

    return MediaLimits(video=merged("video"), audio=merged("audio"))


def video_sampling(media: MediaSettings, overrides: ModelMediaLimits | None) -> dict[str, float]:
    """The model's default frame sampling as vLLM's `media_io_kwargs` video entry: the model's
    own `num_frames` / `fps` when it sets either (they are one choice), else the gateway's;
    empty when neither says."""
    own = overrides.video if overrides is not None else None
    for source in (own, media.video):
        sampling = {
            key: getattr(source, key)
            for key in ("num_frames", "fps")
            if source is not None and getattr(source, key) is not None
        }
        if sampling:
            return sampling
    return {}
