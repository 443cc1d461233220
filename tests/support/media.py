"""Real, small, deterministic media files made in the test: an MP4 (H.264), a WebM (VP8) and a
WAV (16-bit PCM), each a few seconds, the same bytes on every call. Video through PyAV (`av`, a
gateway dependency, with FFmpeg in its wheels); audio through the standard library's `wave`."""

from __future__ import annotations

import base64
import io
import math
import struct
import wave

import av
import numpy as np

# The video codec for each container, with options that make the encoder deterministic.
_BITEXACT = {"threads": "1", "flags": "+bitexact"}
_VIDEO_CODECS = {
    "mp4": ("libx264", {**_BITEXACT, "preset": "ultrafast", "tune": "zerolatency"}),
    "webm": ("libvpx", {**_BITEXACT, "deadline": "realtime", "cpu-used": "8"}),
}


def video_frames(width: int, height: int, count: int) -> list[np.ndarray]:
    """`count` RGB frames: a bright square crossing a colour gradient, so frames differ."""
    ys, xs = np.mgrid[0:height, 0:width]
    background = np.stack(
        [xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), np.full_like(xs, 96)],
        axis=-1,
    ).astype(np.uint8)
    side = max(min(width, height) // 4, 2)
    frames = []
    for i in range(count):
        frame = background.copy()
        left = (i * (width - side)) // max(count - 1, 1)
        top = (height - side) // 2
        frame[top : top + side, left : left + side] = (255, 255, 255)
        frames.append(frame)
    return frames


def make_video(
    container: str = "mp4", seconds: float = 2.0, fps: int = 8, width: int = 64, height: int = 48
) -> bytes:
    """A `seconds`-long video in `container` ("mp4": H.264, "webm": VP8), as bytes."""
    codec, options = _VIDEO_CODECS[container]
    buffer = io.BytesIO()
    # Drop the muxers' own metadata (encoder version strings, creation times): same bytes always.
    with av.open(buffer, mode="w", format=container, options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in video_frames(width, height, round(seconds * fps)):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def make_wav(seconds: float = 2.0, rate: int = 16_000, channels: int = 1) -> bytes:
    """A `seconds`-long 16-bit PCM WAV: a rising tone at `rate` Hz, as bytes."""
    samples = round(seconds * rate)
    pcm = bytearray()
    for n in range(samples):
        t = n / rate
        # A sweep from 220 Hz up to 880 Hz, at half scale.
        value = round(16_000 * math.sin(2 * math.pi * (220 * t + 330 * t * t / seconds)))
        pcm += struct.pack("<h", value) * channels
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(pcm))
    return buffer.getvalue()


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
