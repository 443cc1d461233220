"""What `caption` captions: the files under its paths, each an image, a video or an audio file,
told apart by their content where their name does not say.

How a file's kind is found, cheapest first, because a folder may hold tens of thousands of
images and the walk runs before the first request:
1. A known extension (the tables below) decides without reading a byte: `.jpg` is an image,
   `.mp4` a video, `.wav` audio. A file that lies (a text file named `.mp4`, a cut-off JPEG) is
   still taken and becomes an error line with the gateway's own 400, as a corrupt `.jpg` always
   has; skipping it silently would hide a broken file from the user.
2. Any other file (no extension, `.bin`, `.dat`, ...) is sniffed: its first 16 bytes against
   the image formats the gateway takes (the gateway's own test; Pillow decodes them later),
   then, only when video or audio is asked for, PyAV opens it and looks at its streams (no
   decoding; under a millisecond for a text file, a few for a container, up to about 20 ms for
   64 KiB of noise). A file neither recognises is not media and is left out.

Our own tables rather than `mimetypes`: that one reads /etc/mime.types, which differs between
machines (`.ts` is a Qt translation file on some), and a run must pick the same files anywhere.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlm_gateway.images.decode import MIME_TYPES, sniff_format

Kind = Literal["image", "video", "audio"]
KINDS: tuple[Kind, ...] = ("image", "video", "audio")
DEFAULT_KINDS: frozenset[Kind] = frozenset({"image"})

IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
VIDEO_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
    ".mpeg": "video/mpeg",
    ".mpg": "video/mpeg",
    ".ogv": "video/ogg",
    ".3gp": "video/3gpp",
}
AUDIO_TYPES = {
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
}
TYPES: dict[str, tuple[Kind, str]] = {
    **{ext: ("image", mime) for ext, mime in IMAGE_TYPES.items()},
    **{ext: ("video", mime) for ext, mime in VIDEO_TYPES.items()},
    **{ext: ("audio", mime) for ext, mime in AUDIO_TYPES.items()},
}
# FFmpeg demuxers that read a still picture or text, never a video (`tty` shows .txt files as
# ANSI art): what PyAV finds through them is not media to caption.
_NOT_MEDIA_DEMUXERS = ("image2", "_pipe", "gif", "apng", "webp", "tty")
# FFmpeg's first demuxer name -> the MIME subtype, as the gateway names fetched files.
_SUBTYPE_OF = {"mov": "mp4", "matroska": "webm", "mp3": "mpeg", "avi": "x-msvideo"}
# Enough for FFmpeg to name a container's streams; its default (5 MB) would make a sniff of a
# large unknown file read megabytes for nothing.
_SNIFF_OPTIONS = {"probesize": "65536"}


class CaptionFilesError(Exception):
    """A path that is neither a file nor a folder, or a `--media` that names no kind."""


@dataclass(frozen=True)
class Media:
    kind: Kind
    mime: str


@dataclass
class Collected:
    sources: list[str] = field(default_factory=list)
    media: dict[str, Media] = field(default_factory=dict)  # local files whose kind is known
    left_out: Counter[str] = field(default_factory=Counter)  # kinds the folder walk skipped
    seen: set[str] = field(default_factory=set, repr=False)  # `sources` as a set: no repeats


def parse_kinds(text: str) -> frozenset[Kind]:
    """`--media image,video` -> its kinds; CaptionFilesError naming what is not one."""
    words = [word.strip().lower() for word in text.split(",") if word.strip()]
    unknown = [word for word in words if word not in KINDS]
    if unknown or not words:
        raise CaptionFilesError(f"--media takes {', '.join(KINDS)}, comma-separated (got {text!r})")
    return frozenset(word for word in KINDS if word in words)


def collect_or_explain(paths: Iterable[Path], media: str, say: Callable[[str], None]) -> Collected:
    """`collect` for the command line: the files of the `--media` kinds, and a word on
    stderr about those the walk left out, since `--media image` (the default) passing over
    a folder's videos in silence would look like a bug."""
    kinds = parse_kinds(media)
    found = collect(paths, kinds)
    if found.left_out:
        counted = " and ".join(f"{n} {kind} file(s)" for kind, n in sorted(found.left_out.items()))
        wanted = ",".join(kind for kind in KINDS if kind in kinds or kind in found.left_out)
        say(f"caption: left out {counted} (--media {media}); --media {wanted} takes them too")
    return found


def collect(paths: Iterable[Path], kinds: frozenset[Kind] = DEFAULT_KINDS) -> Collected:
    """Folders (recursive: the files of `kinds`), media files named outright (whatever their
    kind: the user asked for them), and list files (one path or URL a line; relative paths
    are relative to the list file; '#' starts a comment)."""
    found = Collected()
    for path in paths:
        if path.is_dir():
            for item in sorted(path.rglob("*")):
                media = kind_of_file(item, kinds) if item.is_file() else None
                if media is None:
                    continue
                if media.kind in kinds:
                    _add(found, str(item), media)
                else:
                    found.left_out[media.kind] += 1
        elif (media := kind_of_file(path, frozenset(KINDS))) is not None:
            _add(found, str(path), media)  # even if unreadable: that becomes an error line
        elif path.is_file():
            for entry in _list_file(path):
                media = None if _is_url(entry) else kind_of_file(Path(entry), frozenset(KINDS))
                _add(found, entry, media)
        else:
            raise CaptionFilesError(f"{path}: no such file or folder")
    return found


def _add(found: Collected, source: str, media: Media | None) -> None:
    if source in found.seen:
        return
    found.seen.add(source)
    found.sources.append(source)
    if media is not None:
        found.media[source] = media


def _list_file(path: Path) -> list[str]:
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entries.append(line if _is_url(line) or os.path.isabs(line) else str(path.parent / line))
    return entries


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://", "data:"))


def kind_of_file(path: Path, kinds: frozenset[Kind]) -> Media | None:
    """The kind of a local file: by its extension when known (a missing file too: its error
    line says so), else by its content when it exists; None: not media."""
    known = TYPES.get(path.suffix.lower())
    if known is not None:
        return Media(*known)
    if not path.is_file():
        return None
    return sniff(path, sniff_av="video" in kinds or "audio" in kinds)


def sniff(path: Path, sniff_av: bool = True) -> Media | None:
    """What a file of no known extension holds: an image in a format the gateway takes (its
    own magic-byte test on the first 16 bytes, images/decode.py: a renamed .ico or .psd stays
    out instead of becoming an error line), else (with `sniff_av`) a container PyAV finds a
    video or audio stream in."""
    try:
        with path.open("rb") as file:
            head = file.read(16)
    except OSError:
        return None
    image_format = sniff_format(head)
    if image_format is not None:
        return Media("image", MIME_TYPES[image_format])
    return _sniff_container(path) if sniff_av and head else None


def _sniff_container(path: Path) -> Media | None:
    import av
    import av.error

    try:
        with av.open(str(path), mode="r", options=_SNIFF_OPTIONS) as container:
            demuxer = container.format.name
            types = {stream.type for stream in container.streams}
    except (av.error.FFmpegError, ValueError, OSError, EOFError):
        return None
    if any(word in demuxer for word in _NOT_MEDIA_DEMUXERS):
        return None
    kind: Kind | None = "video" if "video" in types else "audio" if "audio" in types else None
    if kind is None:
        return None
    first = demuxer.split(",")[0]
    subtype = "mp4" if first == "mov" else _SUBTYPE_OF.get(first, first)
    return Media(kind, f"{kind}/{subtype}")


def kind_of_source(source: str, media: dict[str, Media]) -> Kind:
    """A source's kind: what the walk found, else what a URL says of itself (a data: URL's
    type, an http(s) URL's extension); images when nothing says otherwise, as before."""
    if source in media:
        return media[source].kind
    head = source[:32].lower()
    if head.startswith("data:"):
        for kind in ("video", "audio"):
            if head.startswith(f"data:{kind}/"):
                return kind
        return "image"
    known = TYPES.get(os.path.splitext(source.split("?", 1)[0].split("#", 1)[0])[1].lower())
    return known[0] if known is not None else "image"
