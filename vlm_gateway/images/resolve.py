"""Resolve every image part of a chat request to a data URL before any backend sees it.

data: URLs are validated and forwarded byte for byte when nothing must change (the declared
MIME type is corrected to the sniffed one); http(s) URLs are fetched by the SSRF-safe fetcher;
file: URLs are read only under the configured local media directory. Backends therefore never
fetch anything from the network or the disk on a client's behalf. For a model whose limits
carry an input size (`images.resize`), larger images are shrunk to it in the preparer's process
pool (prepare.py, pool.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

from vlm_gateway.core.chat_body import json_source
from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.image_errors import (
    BlockedImageURLError,
    ImageError,
    ImageTooLargeError,
    InvalidImageURLError,
    TooManyImagesError,
    shorten,
)
from vlm_gateway.core.protocol import (
    ChatCompletionContentPartImage,
    ChatCompletionContentPartText,
    ChatCompletionRequest,
)
from vlm_gateway.core.request_context import note_affinity_key
from vlm_gateway.images.decode import ImageLimits
from vlm_gateway.images.fetch import ImageFetcher
from vlm_gateway.images.pool import ImagePreparer
from vlm_gateway.images.prepare import checked_data_url, prepare_bytes_url, prepare_data_url
from vlm_gateway.images.settings import ImageSettings
from vlm_gateway.images.urls import parse_http_url, scheme_of

# Data URLs up to this many characters are checked on the event loop when nothing must change
# (base64 and header only: about 50 µs at 450 KB, 1 ms at this size), which is cheaper than
# the hop to a worker thread; larger ones, and any that need pixels decoded, go off the loop.
INLINE_DATA_URL_CHARS = 8 * 1024 * 1024
# Image URLs up to this many characters are digested on the event loop (SHA-256, about 0.27 ms
# for a 337 KB image's data URL); larger ones in a worker thread (hashlib lets go of the GIL).
INLINE_DIGEST_CHARS = 1024 * 1024

# Model name -> its image limits (None: no such model). The config layer provides it: this
# layer knows no model entries and no backend kinds.
LimitsOf = Callable[[str], ImageLimits | None]


class ImageObserver(Protocol):
    """Told about every image the resolver accepts and every request it refuses (the app's
    metrics implement it: vlm_gateway/core/metrics.py)."""

    def image_resolved(
        self,
        model: str,
        source: str,
        size_bytes: int,
        fetch_seconds: float | None,
        decode_seconds: float,
    ) -> None: ...

    def image_refused(self, model: str, code: str | None) -> None: ...


def image_parts(request: ChatCompletionRequest) -> list[tuple[str, ChatCompletionContentPartImage]]:
    """(param, part) for every image part, in order; param names it OpenAI-style."""
    found = []
    for i, message in enumerate(request.messages):
        content = getattr(message, "content", None)
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, ChatCompletionContentPartImage):
                    found.append((f"messages[{i}].content[{j}].image_url", part))
    return found


class ImageResolver:
    def __init__(
        self,
        images: ImageSettings,
        limits_of: LimitsOf,
        fetcher: ImageFetcher,
        observer: ImageObserver | None = None,
        preparer: ImagePreparer | None = None,
        takes_images: Callable[[str], bool] | None = None,
        digests_for: Callable[[str], bool] | None = None,
    ) -> None:
        self._limits_of = limits_of
        # Model name -> whether its images are digested (affinity routing, vLLM image ids:
        # `GatewaySettings.image_digests`); None: every model's are.
        self._digests_for = digests_for
        # Model name -> whether it takes image input (its `input_modalities`); None: all do.
        self._takes_images = takes_images
        self._known_limits: dict[str, ImageLimits] = {}
        self._fetcher = fetcher
        self._media_dir = _real_dir(images.local_media_dir)
        self._observer = observer
        # Shrinks images for models that resize; its owner closes it. Without one: a thread.
        self._preparer = preparer if preparer is not None else ImagePreparer(workers=0)

    async def resolve(self, request: ChatCompletionRequest) -> int:
        """Rewrite the request's image URLs in place and return how many there are; raise a
        400 naming the first bad one."""
        parts = image_parts(request)
        limits = self._limits(request.model) if parts else None
        if limits is None:
            return len(parts)  # no images, or an unknown model: the router's 404 to give
        if self._takes_images is not None and not self._takes_images(request.model):
            param = parts[0][0].removesuffix(".image_url")  # before any fetch: none is useful
            raise InvalidRequestError(
                f"The model '{request.model}' takes text only (its input_modalities has no "
                "'image'); send this request without image parts, or to a vision model.",
                param=param,
                code="image_input_not_supported",
            )
        try:
            await self._resolve_parts(request, parts, limits)
        except ImageError as exc:
            if self._observer is not None:
                self._observer.image_refused(request.model, exc.code)
            raise
        if self._digests_for is None or self._digests_for(request.model):
            for _, part in parts:
                part.set_digest(await digest_of(part.image_url.url))
            note_affinity_key(affinity_key(request))
        return len(parts)

    def _limits(self, model: str) -> ImageLimits | None:
        """The model's limits, worked out once per configured model (settings do not change
        while the app runs; unknown names are not remembered, so they cannot grow the map)."""
        limits = self._known_limits.get(model)
        if limits is None:
            limits = self._limits_of(model)
            if limits is not None:
                self._known_limits[model] = limits
        return limits

    async def _resolve_parts(
        self,
        request: ChatCompletionRequest,
        parts: list[tuple[str, ChatCompletionContentPartImage]],
        limits: ImageLimits,
    ) -> None:
        if len(parts) > limits.max_images:
            raise TooManyImagesError(
                f"The model '{request.model}' accepts at most {limits.max_images} image(s) per "
                f"request; this request has {len(parts)}.",
                param=parts[limits.max_images][0].removesuffix(".image_url"),  # the first extra
            )
        results = await asyncio.gather(
            *(self._resolve_part(request.model, param, part, limits) for param, part in parts),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _resolve_part(
        self, model: str, param: str, part: ChatCompletionContentPartImage, limits: ImageLimits
    ) -> None:
        url, detail = part.image_url.url, part.image_url.detail
        what = f"The image in {param}"
        try:
            scheme = scheme_of(url)
            started = time.perf_counter()
            if scheme == "data":
                part.image_url.url = await self._prepare_data_url(url, detail, limits, what)
                size = _base64_size(url)
                self._resolved(model, scheme, size, None, time.perf_counter() - started)
                return
            if scheme in ("http", "https"):
                fetched = await self._fetcher.fetch(parse_http_url(url), limits.max_bytes)
                data = fetched.data
            elif scheme == "file":
                data = await asyncio.to_thread(self._read_local, url, limits.max_bytes)
            else:
                raise InvalidImageURLError(
                    f"Unsupported image URL '{shorten(url)}': use a data: URL or an http(s) URL."
                )
            fetched_at = time.perf_counter()
            part.image_url.url = await self._prepare(
                limits, what, prepare_bytes_url, data, detail, limits, what
            )
            decoded_at = time.perf_counter()
            self._resolved(model, scheme, len(data), fetched_at - started, decoded_at - fetched_at)
        except ImageError as exc:
            exc.param = exc.param or param + ".url"
            raise

    async def _prepare_data_url(self, url: str, detail: str, limits: ImageLimits, what: str) -> str:
        """The header-only check right here when it settles the matter, else the full one."""
        if limits.resize is None and len(url) <= INLINE_DATA_URL_CHARS:
            source = json_source(url)  # the body's own bytes, quotes included, if unchanged
            url_bytes = source[1:-1] if source is not None else None
            checked = checked_data_url(url, detail, limits, what, url_bytes)
            if checked is not None:
                return checked
        return await self._prepare(limits, what, prepare_data_url, url, detail, limits, what)

    async def _prepare(
        self, limits: ImageLimits, what: str, function: Callable[..., str], *args: object
    ) -> str:
        """In the preparer's pool when the model wants images shrunk (decoding a photo takes
        tens of milliseconds); otherwise this is mostly a header check, done in a thread."""
        if limits.resize is None:
            return await asyncio.to_thread(function, *args)
        return await self._preparer.run(what, function, *args)

    def _resolved(
        self, model: str, source: str, size: int, fetch_s: float | None, decode_s: float
    ) -> None:
        if self._observer is not None:
            self._observer.image_resolved(model, source, size, fetch_s, decode_s)

    def _read_local(self, url: str, max_bytes: int) -> bytes:
        if self._media_dir is None:
            raise BlockedImageURLError(
                "file: image URLs are refused: no local media directory is configured "
                "(images.local_media_dir)."
            )
        path = local_media_path(url, self._media_dir)
        if path.stat().st_size > max_bytes:
            raise ImageTooLargeError(
                f"The file '{shorten(url)}' is larger than the limit of {max_bytes} bytes."
            )
        return path.read_bytes()


async def digest_of(url: str) -> str:
    """A stable id of a resolved image: the SHA-256 of the data URL forwarded (its bytes as
    the model gets them, after any resizing, and their MIME type)."""
    if len(url) <= INLINE_DIGEST_CHARS:
        return image_digest(url)
    return await asyncio.to_thread(image_digest, url)


def image_digest(url: str) -> str:
    source = json_source(url)  # the same bytes as url.encode(), without the copy
    return "sha256:" + hashlib.sha256(url.encode() if source is None else source[1:-1]).hexdigest()


def affinity_key(request: ChatCompletionRequest) -> int:
    """The request's key for `routing: affinity`: a 64-bit digest of the text before its first
    image, video or audio part (the prompt prefix every request with them shares) and of each
    one's digest, in order. Call once they are resolved."""
    hasher = hashlib.blake2b(digest_size=8)
    before_images = True
    for message in request.messages:
        content = getattr(message, "content", None)
        if before_images and isinstance(content, str):
            hasher.update(f"{message.role}\x00{content}\x00".encode())
            continue
        for part in content if isinstance(content, list) else ():
            if isinstance(part, ChatCompletionContentPartText):
                if before_images:
                    hasher.update(f"{message.role}\x00{part.text}\x00".encode())
            elif getattr(part, "digest", None) is not None:  # images, video and audio
                before_images = False
                hasher.update(f"\x01{part.digest}".encode())
    return int.from_bytes(hasher.digest(), "big")


def local_media_path(url: str, media_dir: Path) -> Path:
    """The file a file: URL names, only if it lies under media_dir once symlinks and '..'
    are resolved."""
    rest = url[5:]
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise InvalidImageURLError(
                f"Invalid file URL '{shorten(url)}': remote hosts are not allowed."
            )
        rest = slash + path
    if "?" in rest or "#" in rest or "\\" in rest:
        raise InvalidImageURLError(f"Invalid file URL '{shorten(url)}'.")
    decoded = unquote(rest)
    if "\x00" in decoded or not decoded.startswith("/"):
        raise InvalidImageURLError(f"Invalid file URL '{shorten(url)}'.")
    real = Path(os.path.realpath(decoded))
    if not real.is_relative_to(media_dir) or not real.is_file():
        raise BlockedImageURLError(
            f"The file URL '{shorten(url)}' was refused: it is not a "
            "file under the local media directory."
        )
    return real


def _base64_size(url: str) -> int:
    """Decoded length of a data URL's checked base64 (strict: no whitespace, padding only at
    the end, and at least 4 characters: an empty image is refused), not copied out."""
    return (len(url) - url.index(",") - 1) * 3 // 4 - url[-2:].count("=")


def _real_dir(path: Path | None) -> Path | None:
    return Path(os.path.realpath(path)) if path is not None else None
