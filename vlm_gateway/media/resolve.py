"""Resolve a chat request's parts before any backend sees them: images through the image
resolver (images/resolve.py), video and audio here.

A video or audio part is checked in this order, and a 400 naming it stops the request before
anything is forwarded: the model takes that modality (before any fetch), per-request frame or
processor settings only for backends that honour them, the count per request, the bytes (a
data URL's size from its length, a download cut at the limit), then its bytes are probed off
the event loop (media/probe.py: container, codec, truncation, the declared kind) and its length
is held to `max_seconds`. data: URLs and `input_audio` go on as the client's own bytes; http(s)
and file: sources become data URLs, so no backend fetches anything on a client's behalf.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pybase64

from vlm_gateway.core.chat_body import json_source
from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.image_errors import ImageError, shorten
from vlm_gateway.core.media_errors import MediaError, media_error
from vlm_gateway.core.protocol import ChatCompletionContentPartInputAudio, ChatCompletionRequest
from vlm_gateway.core.request_context import note_affinity_key
from vlm_gateway.images.fetch import ImageFetcher
from vlm_gateway.images.prepare import decode_base64
from vlm_gateway.images.resolve import ImageResolver, affinity_key, digest_of, local_media_path
from vlm_gateway.images.urls import parse_http_url, scheme_of
from vlm_gateway.media.parts import FoundPart, map_file_parts, media_parts, modalities_asked
from vlm_gateway.media.probe import MediaInfo, probe_media
from vlm_gateway.media.request_kwargs import check_request_kwargs, requested_fps
from vlm_gateway.media.settings import MODALITIES, MediaLimits, ModalityLimits

# Per-request settings only vLLM's chat API honours (frames, fps, processor arguments).
MEDIA_KWARGS = ("media_io_kwargs", "mm_processor_kwargs")
# FFmpeg demuxer (first word of its name) -> the MIME subtype a fetched file is sent under.
_SUBTYPE_OF = {"mov": "mp4", "matroska": "webm", "mp3": "mpeg", "avi": "x-msvideo"}


@dataclass(frozen=True)
class ModelMedia:
    """What the resolver must know of one model (the config layer provides it)."""

    limits: MediaLimits
    modalities: tuple[str, ...]
    takes_media_kwargs: bool  # its backend forwards `media_io_kwargs` to vLLM
    bounds_media_kwargs: bool  # ... held to the gateway's bounds first (managed vLLM)
    digests: bool  # its media are digested (affinity routing, vLLM's part uuids)
    max_pixels: int  # per image or frame, for `mm_processor_kwargs` (images.max_image_pixels)


class MediaObserver(Protocol):
    """Told about every video and audio part accepted or refused (the app's metrics)."""

    def media_resolved(self, model: str, modality: str, source: str, size_bytes: int) -> None: ...

    def media_refused(self, model: str, modality: str, code: str | None) -> None: ...


class RequestResolver:
    def __init__(
        self,
        images: ImageResolver,
        media_of: Callable[[str], ModelMedia | None],
        fetcher: ImageFetcher,
        media_dir: Path | None = None,
        observer: MediaObserver | None = None,
    ) -> None:
        self._images = images
        self._media_of = media_of
        # Per configured model, worked out once: settings do not change while the app runs, and
        # a managed vLLM's modalities come from its config.json (no file read per request).
        # Unknown names are not remembered, so clients cannot grow the map.
        self._known: dict[str, ModelMedia] = {}
        self._fetcher = fetcher
        self._media_dir = media_dir
        self._observer = observer

    async def resolve(self, request: ChatCompletionRequest) -> int:
        """Check and rewrite every media part in place; return the number of images."""
        map_file_parts(request)
        model = self._model_media(request.model)  # None: an unknown model, the router's 404
        if model is not None:
            _check_asked(request, model)
        count = await self._images.resolve(request)
        parts = media_parts(request)
        if parts and model is not None:
            lengths = await asyncio.gather(
                *(self._resolve_part(request.model, p, model) for p in parts)
            )
            _check_frames(request, parts, lengths, model)
            if model.digests:
                for found in parts:
                    found.part.set_digest(await digest_of(_payload_of(found)))
                note_affinity_key(affinity_key(request))
        return count

    def _model_media(self, model: str) -> ModelMedia | None:
        media = self._known.get(model)
        if media is None:
            media = self._media_of(model)
            if media is not None:
                self._known[model] = media
        return media

    async def _resolve_part(self, model: str, found: FoundPart, media: ModelMedia) -> float | None:
        """The part checked (and made a data URL if fetched); its length in seconds."""
        limits = media.limits.of(found.modality)
        try:
            size, source, seconds = await self._check_part(found, limits)
        except ImageError as exc:  # from the shared fetcher and base64 check: name the part
            error = _as_media_error(exc, found)
            self._refused(model, found.modality, error.code)
            raise error from None
        except MediaError as exc:
            exc.param = exc.param or found.param
            self._refused(model, found.modality, exc.code)
            raise
        if self._observer is not None:
            self._observer.media_resolved(model, found.modality, source, size)
        return seconds

    async def _check_part(
        self, found: FoundPart, limits: ModalityLimits
    ) -> tuple[int, str, float | None]:
        """(bytes, source, seconds) once the part is checked and, if fetched, made a data
        URL."""
        what = f"The {found.modality} in {found.param}"
        part = found.part
        if isinstance(part, ChatCompletionContentPartInputAudio):
            data = _decoded(part.input_audio.data, limits, found, what)
            info = await _probed(data, found, part.input_audio.format, limits, what)
            return len(data), "data", info.seconds
        url = _url_of(found)
        scheme = scheme_of(url)
        if scheme == "data":
            declared, start = _data_url_type(url, found, what)
            source = json_source(url)
            payload = url[start:] if source is None else source[1 + start : -1]
            data = _decoded(payload, limits, found, what)
            info = await _probed(data, found, declared, limits, what)
            return len(data), "data", info.seconds
        if scheme in ("http", "https"):
            fetched = await self._fetcher.fetch(
                parse_http_url(url), limits.max_bytes, found.modality, limits.fetch_timeout
            )
            data = fetched.data
        elif scheme == "file":
            data = await asyncio.to_thread(self._read_local, url, limits.max_bytes, found)
        else:
            raise media_error(
                found.modality,
                "invalid_url",
                f"Unsupported {found.modality} URL '{shorten(url)}': use a data: URL or an "
                "http(s) URL.",
            )
        info = await _probed(data, found, None, limits, what)
        _set_url(found, _to_data_url(data, info, found))
        return len(data), scheme or "data", info.seconds

    def _read_local(self, url: str, max_bytes: int, found: FoundPart) -> bytes:
        if self._media_dir is None:
            raise media_error(
                found.modality,
                "url_blocked",
                f"file: {found.modality} URLs are refused: no local media directory is "
                "configured (images.local_media_dir).",
            )
        path = local_media_path(url, self._media_dir)
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)  # no further than the limit
        if len(data) > max_bytes:
            raise _too_large(found, max_bytes)
        return data

    def _refused(self, model: str, modality: str, code: str | None) -> None:
        if self._observer is not None:
            self._observer.media_refused(model, modality, code)


def _check_asked(request: ChatCompletionRequest, media: ModelMedia) -> None:
    """What the model cannot take, refused before anything is fetched or decoded."""
    for modality, param in modalities_asked(request).items():
        if modality in MODALITIES and modality not in media.modalities:
            taken = ", ".join(media.modalities)
            raise InvalidRequestError(
                f"The model '{request.model}' does not take {modality} input (it takes "
                f"{taken}: its input_modalities); send this request without {modality} parts, "
                "or to a model that takes them.",
                param=param,
                code=f"{modality}_input_not_supported",
            )
    extra = request.model_extra or {}
    for field in MEDIA_KWARGS:
        if field in extra and not media.takes_media_kwargs:
            raise InvalidRequestError(
                f"'{field}' is honoured only by vLLM-served models; the model "
                f"'{request.model}' cannot honour it: send the request without it.",
                param=field,
                code="unsupported_parameter",
            )
    if media.bounds_media_kwargs:
        max_frames = media.limits.video.max_frames or 0
        check_request_kwargs(extra, media.modalities, max_frames, media.max_pixels)
    parts = media_parts(request)
    for modality in MODALITIES:
        count = sum(1 for found in parts if found.modality == modality)
        allowed = media.limits.of(modality).max_parts
        if count > allowed:
            raise media_error(
                modality,
                "too_many",
                f"The model '{request.model}' accepts at most {allowed} {modality} part(s) per "
                f"request; this request has {count}.",
                param="messages",
            )


def _check_frames(
    request: ChatCompletionRequest,
    parts: list[FoundPart],
    lengths: list[float | None],
    media: ModelMedia,
) -> None:
    """A frame rate asked for, held to `max_frames` over each video's probed length."""
    fps = requested_fps(request.model_extra or {}) if media.bounds_media_kwargs else None
    max_frames = media.limits.video.max_frames
    if fps is None or max_frames is None:
        return
    for found, seconds in zip(parts, lengths, strict=True):
        if found.modality == "video" and seconds is not None and fps * seconds > max_frames:
            raise InvalidRequestError(
                f"Sampling the video in {found.param} ({seconds:.1f} s) at {fps:g} frames a "
                f"second makes {fps * seconds:.0f} frames, more than the limit of {max_frames} "
                "(media.video.max_frames): ask for fewer frames a second, or num_frames.",
                param="media_io_kwargs.video.fps",
                code="too_many_frames",
            )


def _decoded(
    payload: str | memoryview,
    limits: ModalityLimits,
    found: FoundPart,
    what: str,
) -> bytes:
    """The base64 payload's bytes, refused by its length before decoding when too large."""
    if len(payload) * 3 // 4 > limits.max_bytes + 2:
        raise _too_large(found, limits.max_bytes)
    data = decode_base64(payload, what)
    if len(data) > limits.max_bytes:
        raise _too_large(found, limits.max_bytes)
    return data


async def _probed(
    data: bytes, found: FoundPart, declared: str | None, limits: ModalityLimits, what: str
) -> MediaInfo:
    info = await asyncio.to_thread(probe_media, data, found.modality, declared, what)
    if info.seconds is not None and info.seconds > limits.max_seconds:
        raise media_error(
            found.modality,
            "too_long",
            f"{what} lasts {info.seconds:.1f} s, longer than the limit of "
            f"{limits.max_seconds:g} s (media.{found.modality}.max_seconds).",
        )
    return info


def _data_url_type(url: str, found: FoundPart, what: str) -> tuple[str | None, int]:
    """(declared MIME subtype, index of the payload) of a base64 data URL of this modality."""
    comma = url.find(",", 0, 256)
    header = url[5:comma].lower() if comma != -1 else ""
    media_type, _, params = header.partition(";")
    if comma == -1 or "base64" not in params.split(";"):
        raise media_error(found.modality, "invalid", f"{what} is not a base64 data: URL.")
    kind, _, subtype = media_type.partition("/")
    if kind not in (found.modality, "application"):
        raise media_error(
            found.modality,
            "invalid",
            f"{what} is declared as '{media_type}', not {found.modality}/*.",
        )
    return (subtype if kind == found.modality else None), comma + 1


def _url_of(found: FoundPart) -> str:
    url = getattr(found.part, f"{found.modality}_url").url
    assert isinstance(url, str)
    return url


def _set_url(found: FoundPart, url: str) -> None:
    getattr(found.part, f"{found.modality}_url").url = url


def _payload_of(found: FoundPart) -> str:
    part = found.part
    if isinstance(part, ChatCompletionContentPartInputAudio):
        return part.input_audio.data
    return _url_of(found)


def _to_data_url(data: bytes, info: MediaInfo, found: FoundPart) -> str:
    first = info.container.split(",")[0]
    return f"data:{found.modality}/{_SUBTYPE_OF.get(first, first)};base64," + pybase64.b64encode(
        data
    ).decode("ascii")


def _too_large(found: FoundPart, max_bytes: int) -> MediaError:
    return media_error(
        found.modality,
        "too_large",
        f"The {found.modality} in {found.param} is larger than the limit of {max_bytes} bytes "
        f"(media.{found.modality}.max_bytes).",
        param=found.param,
    )


def _as_media_error(exc: ImageError, found: FoundPart) -> MediaError:
    """An error of the shared image machinery (fetcher, base64, file: paths) in this part's
    modality: `image_too_large` -> `video_too_large`, its message already in the right noun
    where the fetcher words it."""
    code = (exc.code or "invalid_image").replace("image", found.modality)
    return MediaError(exc.message.replace("image", found.modality), param=found.param, code=code)
