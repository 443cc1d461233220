"""Per-request `media_io_kwargs` and `mm_processor_kwargs`, checked before they reach vLLM.

vLLM refuses both unless it runs with `--trust-request-mm-kwargs`, because they change what
loading and preprocessing a request costs (a client asking for 100 000 frames). The gateway is
where clients are known, so it holds them to bounds itself and launches managed vLLM trusting
what it lets through: frames per video (`media.video.max_frames`, a count or a rate times the
video's length), pixels per image or frame (`images.max_image_pixels`), and a short list of
processor arguments whose cost is bounded. Anything else is a 400 naming the key.
"""

from __future__ import annotations

from typing import Any

from vlm_gateway.core.errors import InvalidRequestError

# media_io_kwargs: modality -> the keys a request may set (vLLM's media loaders read them).
_IO_KEYS = {"video": ("num_frames", "fps"), "audio": (), "image": ()}
# mm_processor_kwargs the gateway can bound: booleans, rates and pixel counts (Qwen's names).
_FLAG_KEYS = ("use_audio_in_video", "do_sample_frames")
_PIXEL_KEYS = ("min_pixels", "max_pixels")


def check_request_kwargs(
    extra: dict[str, Any], modalities: tuple[str, ...], max_frames: int, max_pixels: int
) -> None:
    """400 naming the key for anything outside the bounds (see the module's docstring)."""
    io_kwargs = extra.get("media_io_kwargs")
    if io_kwargs is not None:
        _check_io(io_kwargs, modalities, max_frames)
    processor = extra.get("mm_processor_kwargs")
    if processor is not None:
        _check_processor(processor, max_frames, max_pixels)


def requested_fps(extra: dict[str, Any]) -> float | None:
    """The frame rate a request asks vLLM to sample its videos at, if any (checked against
    each video's length once it is probed)."""
    for field, path in (("media_io_kwargs", ("video", "fps")), ("mm_processor_kwargs", ("fps",))):
        value: Any = extra.get(field)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _check_io(io_kwargs: Any, modalities: tuple[str, ...], max_frames: int) -> None:
    _object(io_kwargs, "media_io_kwargs")
    for modality, settings in io_kwargs.items():
        where = f"media_io_kwargs.{modality}"
        if modality not in _IO_KEYS or modality not in modalities:
            raise _bad(where, f"'{modality}' is not a modality this model takes media settings for")
        _object(settings, where)
        for key, value in settings.items():
            if key not in _IO_KEYS[modality]:
                allowed = ", ".join(_IO_KEYS[modality]) or "none"
                raise _bad(
                    f"{where}.{key}", f"not a setting the gateway passes on (allowed: {allowed})"
                )
            _frames_value(f"{where}.{key}", key, value, max_frames)


def _check_processor(processor: Any, max_frames: int, max_pixels: int) -> None:
    _object(processor, "mm_processor_kwargs")
    for key, value in processor.items():
        where = f"mm_processor_kwargs.{key}"
        if key in _FLAG_KEYS:
            if not isinstance(value, bool):
                raise _bad(where, "must be true or false")
        elif key in _PIXEL_KEYS:
            if not _positive_int(value) or value > max_pixels:
                raise _bad(
                    where,
                    f"must be a whole number from 1 to {max_pixels} (images.max_image_pixels)",
                )
        elif key == "fps":
            _frames_value(where, key, value, max_frames)
        else:
            raise _bad(
                where,
                "not a processor argument the gateway passes on (allowed: "
                + ", ".join((*_FLAG_KEYS, *_PIXEL_KEYS, "fps"))
                + ")",
            )


def _frames_value(where: str, key: str, value: Any, max_frames: int) -> None:
    if key == "num_frames":
        if not _positive_int(value) or value > max_frames:
            raise _bad(
                where, f"must be a whole number from 1 to {max_frames} (media.video.max_frames)"
            )
    elif (
        isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= max_frames
    ):
        raise _bad(where, f"must be a number of frames a second above 0, at most {max_frames}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _object(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise _bad(where, "must be an object")


def _bad(param: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid value for '{param}': {why}.", param=param, code="invalid_value"
    )
