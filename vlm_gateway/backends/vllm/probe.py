"""The body of the liveness probe: a real 1-token chat, with a tiny image for vision models
(vLLM's /health answers 200 with a dead engine: vLLM #7633, #39863)."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any


def probe_body(model: str, with_image: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "Describe."}]
    if with_image:
        content.insert(0, {"type": "image_url", "image_url": {"url": _TINY_PNG}})
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 1,
        "temperature": 0,
    }


def _gray_png(size: int = 32) -> str:
    """A size x size gray PNG as a data URL (a 1x1 image has crashed servers: CVE-2026-22773)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x80" * (3 * size) for _ in range(size))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode()


_TINY_PNG = _gray_png()
