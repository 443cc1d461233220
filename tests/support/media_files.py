"""Small real video and audio files for tests, made here rather than checked in: an mp4 that
PyAV writes (mpeg4, FFmpeg's own encoder, so every PyAV wheel has it), a WAV from the standard
library, and a truncated mp4 the gateway's probe refuses."""

from __future__ import annotations

import io
import math
import struct
import wave

import av
import numpy as np


def mp4_bytes(seconds: float = 1.0, size: int = 64, fps: int = 8) -> bytes:
    """A `seconds`-long mpeg4 video in an mp4, `size` x `size`, a grey that brightens."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        frames = max(1, round(seconds * fps))
        for index in range(frames):
            shade = np.full((size, size, 3), 40 + index * 180 // frames, np.uint8)
            frame = av.VideoFrame.from_ndarray(shade, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # what the encoder still holds
    return out.getvalue()


def truncated_mp4_bytes() -> bytes:
    """An mp4 cut in half: PyAV writes its index (moov) last, so what is left has a header
    and frames but no index: FFmpeg finds no video stream in it."""
    whole = mp4_bytes()
    return whole[: len(whole) // 2]


def wav_bytes(seconds: float = 0.5, rate: int = 16000, hz: float = 440.0) -> bytes:
    """A mono 16-bit PCM WAV of a sine tone."""
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        samples = (
            int(12000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(int(seconds * rate))
        )
        file.writeframes(b"".join(struct.pack("<h", sample) for sample in samples))
    return out.getvalue()
