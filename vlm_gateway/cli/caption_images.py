"""How `caption` turns a local file into the URL it sends: images, videos and audio files.

When the model shrinks its images (`images.resize`), caption does that itself, before the
request exists, in a process pool of its own: a worker reads the file and returns a data URL
of a few kilobytes, so a 5 MB photo is never base64-encoded, put into JSON, parsed again and
handed to the gateway's pool (that was most of the event loop's work per image). The gateway
still checks what arrives: a model-sized image passes its check unchanged. The in-process
gateway runs its own check in a thread then (`prepare_workers: 0`): one pool per run.

A file the pool refuses (corrupt, truncated, too large) is sent as it is instead, so the
gateway's own 400 is the error line, in the same words as without this step.

Videos and audio files go as they are, a data URL under the MIME type the walk found
(caption_files.py): the gateway probes them and vLLM samples the frames, nothing to shrink here.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
from pathlib import Path
from typing import Any

from vlm_gateway.cli.caption_files import Media
from vlm_gateway.core.image_errors import ImageError
from vlm_gateway.images.decode import ImageLimits
from vlm_gateway.images.pool import ImagePreparer
from vlm_gateway.images.prepare import prepare_file_url
from vlm_gateway.images.settings import parse_resize

WHAT = "The image"


class ImageReader:
    """Local files as data URLs: shrunk in `preparer` for `limits.resize` when given."""

    def __init__(
        self, preparer: ImagePreparer | None = None, limits: ImageLimits | None = None
    ) -> None:
        self.preparer = preparer if limits is not None and limits.resize else None
        self.limits = limits

    async def url(self, source: str, media: Media | None = None) -> str:
        """A URL as is; a local file as a data URL. OSError: the file cannot be read."""
        if source.startswith(("http://", "https://", "data:")):
            return source
        is_image = media is None or media.kind == "image"
        if is_image and self.preparer is not None and self.limits is not None:
            try:
                return await self.preparer.run(WHAT, prepare_file_url, source, self.limits, WHAT)
            except ImageError:
                pass  # sent as it is: the gateway's 400 is the error line
        return await asyncio.to_thread(data_url, source, media)

    async def aclose(self) -> None:
        if self.preparer is not None:
            await self.preparer.aclose()


def data_url(path: str, media: Media | None) -> str:
    """The file's bytes as a base64 data URL under its MIME type (a thread's work: a video's
    base64 takes milliseconds)."""
    data = Path(path).read_bytes()
    mime = media.mime if media is not None else mimetypes.guess_type(path)[0]
    return f"data:{mime or 'application/octet-stream'};base64," + base64.b64encode(data).decode()


def served_limits(listing: Any, model: str) -> ImageLimits | None:
    """The image limits a vlm-gateway says for `model` in its /v1/models listing, when it
    shrinks that model's images (None for any other server or model)."""
    cards = listing.get("data") if isinstance(listing, dict) else None
    for card in cards if isinstance(cards, list) else []:
        ours = card.get("vlm_gateway") if isinstance(card, dict) else None
        if not isinstance(ours, dict) or card.get("id") != model:
            continue
        images = ours.get("images")
        if not isinstance(images, dict):
            return None
        try:
            resize = parse_resize(str(images["resize"]))
            if not isinstance(resize, tuple):
                return None
            return ImageLimits(
                max_bytes=int(images["max_image_bytes"]),
                max_pixels=int(images["max_image_pixels"]),
                min_side=int(images["min_image_side"]),
                max_side=int(images["max_image_side"]) if images["max_image_side"] else None,
                resize=resize,
            )
        except (KeyError, TypeError, ValueError):
            return None
    return None
