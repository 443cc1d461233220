"""Small generated images for tests, as bytes and as data URLs."""

from __future__ import annotations

import base64
import io
import random


def png_bytes(width: int = 30, height: int = 30, seed: int = 0) -> bytes:
    from PIL import Image

    rng = random.Random(seed)
    image = Image.new("RGB", (width, height))
    image.putdata(
        [
            (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            for _ in range(width * height)
        ]
    )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_data_url(width: int = 30, height: int = 30, seed: int = 0) -> str:
    return data_url(png_bytes(width, height, seed))


def image_message(text: str | None, url: str) -> dict:
    """One user message with an image part and, if given, a text part."""
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def blip2_caption(stream: bool, max_tokens: int = 400) -> dict:
    """A chat request to model `blip2` with an image that makes exactly `max_tokens` tokens
    (vLLM's `ignore_eos`, `min_tokens`): a stream long enough to be cut mid-way."""
    return {
        "model": "blip2",
        "messages": [image_message("Describe.", png_data_url())],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "ignore_eos": True,
        "min_tokens": max_tokens,
    }
