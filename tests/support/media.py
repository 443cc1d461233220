"""Real video and audio files made in the test, the same bytes on every call: mp4 and webm
through PyAV (FFmpeg's encoders in its wheels, told to be bit-exact), WAV through the standard
library's `wave`."""

from __future__ import annotations

import base64
import io
import os
import tempfile
import wave

import av
import numpy as np

_BITEXACT = {"threads": "1", "flags": "+bitexact"}
# x264's lookahead and rate control gave different bytes from call to call under pytest:
# zerolatency (no lookahead, no B-frames) makes its output the same every time.
_ENCODER = {"libx264": {**_BITEXACT, "tune": "zerolatency"}}


def _frames(count: int, width: int, height: int, seed: int) -> list[np.ndarray]:
    """A moving gradient with a little noise: compresses like a real clip, not like static."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    frames = []
    for index in range(count):
        base = (x + y + index * 4) % 256
        noise = rng.normal(0, 12, (height, width, 3))
        frames.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return frames


def video_bytes(
    seconds: float = 1.0,
    size: tuple[int, int] = (64, 64),
    fmt: str = "mp4",
    codec: str = "mpeg4",
    rate: int = 10,
    bit_rate: int | None = None,
    faststart: bool = False,
    seed: int = 0,
) -> bytes:
    """An mp4 (mpeg4 or libx264) or a webm (libvpx) of `seconds` at `rate` frames a second."""
    with tempfile.TemporaryDirectory() as scratch:  # faststart rewrites the file by name
        path = os.path.join(scratch, f"clip.{fmt}")
        # No encoder version strings or creation times in the file, one encoder thread: the
        # same bytes on every call.
        options = {"fflags": "+bitexact", **({"movflags": "faststart"} if faststart else {})}
        with av.open(path, "w", format=fmt, options=options) as container:
            stream = container.add_stream(codec, rate=rate, options=_ENCODER.get(codec, _BITEXACT))
            stream.width, stream.height = size
            stream.pix_fmt = "yuv420p"
            if bit_rate is not None:
                stream.bit_rate = bit_rate
            for frame in _frames(max(1, round(seconds * rate)), *size, seed):
                video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                for packet in stream.encode(video_frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        with open(path, "rb") as file:
            return file.read()


def wav_bytes(seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> bytes:
    """Mono 16-bit PCM: a tone with a little noise."""
    count = int(seconds * rate)
    t = np.arange(count) / rate
    rng = np.random.default_rng(seed)
    samples = 8000 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 500, count)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def mp3_bytes(seconds: float = 1.0, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate)
        samples = np.full((1, 1152), 1000, dtype=np.int16)
        for _ in range(max(1, int(seconds * rate) // 1152)):
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def noise_wav(size: int = 4096, seed: int = 0) -> bytes:
    """A RIFF/WAVE header over random bytes: no `fmt ` chunk, nothing a decoder can read."""
    header = b"RIFF" + (size + 4).to_bytes(4, "little") + b"WAVE"
    return header + np.random.default_rng(seed).bytes(size)


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def truncated_mp4() -> bytes:
    """An mp4 cut in half: PyAV writes its index (moov) last, so what is left has frames but
    no index, and FFmpeg cannot open it."""
    whole = video_bytes()
    return whole[: len(whole) // 2]
