"""What a video or audio file is, read from its own bytes with PyAV (FFmpeg's demuxers and
decoders, shipped in its wheels): the container, the codecs, the length in seconds.

The probe opens the container and walks its packets without decoding them (a 5 MB mp4: about
3 ms), so a truncated file (fewer packets than its index promises, packets ending well before
its stated length, an index cut short), a corrupt one (a header over noise) or a mislabelled
one (`format: "wav"` over mp3, `video/mp4` over a PNG) is refused before anything is forwarded.
Audio also has its first frame decoded (well under a millisecond). Video frames are not
decoded here: FFmpeg's own stream analysis decodes a few frames to learn the pixel format,
20-250 ms for a 720p H.264 clip, and the model's server decodes the frames it samples anyway;
`skip_frame: all` turns that off, the container and codec are still read from the file.
Nothing is transcoded: valid bytes go on as they came. Runs in a worker thread, never on the
event loop.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any, cast

import av
import av.error

from vlm_gateway.core.media_errors import MediaError, media_error
from vlm_gateway.media.settings import Modality

log = logging.getLogger(__name__)

# FFmpeg demuxers that read one still picture, never a video (`video/mp4` over a PNG).
_STILL_IMAGE_DEMUXERS = ("image2", "_pipe", "gif", "apng", "webp")
# Declared names (a MIME subtype, or input_audio's `format`) -> a word of FFmpeg's demuxer name.
_DEMUXER_OF = {
    "mp4": "mp4",
    "quicktime": "mov",
    "mov": "mov",
    "m4a": "m4a",
    "3gpp": "3gp",
    "webm": "webm",
    "x-matroska": "matroska",
    "matroska": "matroska",
    "mkv": "matroska",
    "ogg": "ogg",
    "x-msvideo": "avi",
    "avi": "avi",
    "mpeg": "mpeg",
    "wav": "wav",
    "x-wav": "wav",
    "wave": "wav",
    "vnd.wave": "wav",
    "mp3": "mp3",
    "flac": "flac",
    "x-flac": "flac",
    "aac": "aac",
    "opus": "ogg",
}
# `audio/mpeg` is mp3; `video/mpeg` is an MPEG program stream.
_AUDIO_DEMUXER_OF = _DEMUXER_OF | {"mpeg": "mp3", "mp4": "m4a", "x-m4a": "m4a"}
# `probesize`: what FFmpeg reads to find the streams before the probe walks them; containers
# state their codecs in their header or index (an mp4 seeks to it), and the default (5 MB)
# makes opening a 30 s WAV cost 4 ms instead of 0.3, a 5 MB mp4 2.4 ms instead of 0.65.
# `skip_frame`: no video frame decoded while FFmpeg analyses the streams (see above): 67 ms
# for a 5 MB 720p H.264 mp4 otherwise.
_OPEN_OPTIONS: dict[str, dict[str, str]] = {
    "audio": {"probesize": "4096"},
    "video": {"skip_frame": "all", "probesize": "65536"},
}


@dataclass(frozen=True)
class MediaInfo:
    container: str  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codecs: tuple[str, ...]
    seconds: float | None


def probe_media(data: bytes, modality: Modality, declared: str | None, what: str) -> MediaInfo:
    """The file's container, codecs and length; a 400 (MediaError) naming `what` when it is
    not a readable `modality` file of the `declared` kind (a MIME subtype or a format word)."""
    try:
        with av.open(io.BytesIO(data), mode="r", options=_OPEN_OPTIONS[modality]) as container:
            info = _inspect(container, modality, what)
            _check_declared(info.container, modality, declared, what)
            return info
    except MediaError:
        raise
    except Exception as exc:
        if not isinstance(exc, av.error.FFmpegError | ValueError | OSError | EOFError):
            # Bytes from a client, read by a C library: what it did not foresee is still the
            # file's fault, not a 500; logged so the case can become a named check.
            log.warning("probing %s: %s", what, type(exc).__name__, exc_info=True)
        raise media_error(
            modality,
            "invalid",
            f"{what} could not be read: it is not {_a(modality)} file FFmpeg can open "
            "(truncated, corrupt, or another kind of file).",
        ) from None


def _inspect(container: av.container.InputContainer, modality: Modality, what: str) -> MediaInfo:
    name = container.format.name
    if modality == "video" and any(word in name for word in _STILL_IMAGE_DEMUXERS):
        raise media_error(modality, "invalid", f"{what} holds a still image ({name}), not a video.")
    streams = [stream for stream in container.streams if stream.type == modality]
    if not streams:
        found = ", ".join(sorted({stream.type for stream in container.streams})) or "nothing"
        raise media_error(
            modality, "invalid", f"{what} has no {modality} stream (its container holds {found})."
        )
    main = streams[0]
    if main.codec_context is None:  # an index cut short: FFmpeg knows no codec for the stream
        raise media_error(modality, "invalid", f"{what} names no {modality} codec FFmpeg has.")
    seconds = _stated_seconds(container, main)
    covered = _walk_packets(container, main, modality, what)
    if seconds is None or seconds <= 0:
        seconds = covered
    elif covered is not None and covered < seconds - max(0.5, seconds / 20):
        raise _truncated(modality, what)  # packets end well before the stated length
    codecs = tuple(
        stream.codec_context.name
        for stream in container.streams
        if stream.type in ("video", "audio") and stream.codec_context is not None
    )
    return MediaInfo(name, codecs, seconds)


def _stated_seconds(
    container: av.container.InputContainer, stream: av.stream.Stream
) -> float | None:
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def _walk_packets(
    container: av.container.InputContainer, stream: av.stream.Stream, modality: Modality, what: str
) -> float | None:
    """Demux every packet of `stream` (no decoding but an audio file's first frame): their
    count against the container's index, and the time they reach (None: no timestamps)."""
    count, reached = 0, None
    decoded = modality == "video"  # frames left to the model's server (module docstring)
    # Uncompressed PCM (WAV): every byte is a sample and FFmpeg states the length from the
    # byte count, so one packet tells all; walking a 30 s WAV's 470 packets would cost 5 ms.
    whole = not stream.codec_context.name.startswith("pcm_")
    for packet in container.demux(stream):
        if packet.size == 0:
            continue  # the flush packet at the end
        count += 1
        if packet.pts is not None and packet.time_base is not None:
            end = packet.pts + (packet.duration or 0)
            at = float(end * packet.time_base)
            reached = at if reached is None else max(reached, at)
        if not decoded:
            decoded = bool(packet.decode())  # a codec may keep its first packets
        elif not whole:
            return None
    if not decoded:
        decoded = bool(cast(Any, stream.codec_context).decode(None))  # what it kept, flushed
    if not decoded:
        raise media_error(modality, "invalid", f"{what} holds no {modality} frame that decodes.")
    if stream.frames and count < stream.frames:
        raise _truncated(modality, what)
    return reached


def _truncated(modality: Modality, what: str) -> MediaError:
    return media_error(
        modality, "invalid", f"{what} is truncated: it ends before its own index says it does."
    )


def _check_declared(container: str, modality: Modality, declared: str | None, what: str) -> None:
    """A declared kind the bytes are not (`format: "wav"` over an mp3) is the client's mistake:
    refused, not forwarded under a wrong name for the model's decoder to stumble on."""
    if not declared:
        return
    table = _AUDIO_DEMUXER_OF if modality == "audio" else _DEMUXER_OF
    expected = table.get(declared.lower())
    if expected is not None and expected not in container.split(","):
        actual = container.split(",")[0]
        raise media_error(
            modality,
            "invalid",
            f"{what} is declared as '{declared}' but its bytes are {actual}.",
        )


def _a(modality: str) -> str:
    return "an audio" if modality == "audio" else "a video"
