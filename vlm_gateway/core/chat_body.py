"""Parsing a chat request without parsing its large data URLs (issue 14).

Most of a caption request's bytes are one base64 data URL, and JSON-parsing that string was
the largest single cost of the image request (orjson: about 140 µs for 450 KB with warm caches,
a quarter of the gateway's CPU at 64 in flight, where caches are cold). A base64 data URL holds
no character JSON must unescape, so its value is exactly its bytes between the quotes: this
parses the body with each long data URL cut out, then puts the string back, made from those
bytes (one ASCII decode, a memory copy's cost).

It falls back to parsing the whole body whenever the shortcut could differ from orjson in any
way: a string with a backslash, a non-ASCII byte or a control character in its header, or one
that does not turn out to be the URL of an image, video, audio or file part of a message. The
payload after the comma is not checked here: the resolvers decode it as strict base64 (any other
byte is a 400 there) before anything is forwarded.

The bytes each string was made from are kept for the request being served (a context variable,
so in the request's own task): `json_source` finds them again for a string that is still the
one put back, so the resolver decodes the base64 from them (no copy of the payload) and
`dumps_chat_body` forwards an unchanged data URL as a view of the client's own bytes instead of
serialising it again (docs/benchmarks.md, "The image request's copies").
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import orjson

# Shorter strings are cheap to parse: cutting them out would cost more than it saves.
LONG_DATA_URL_BYTES = 32 * 1024
_OPENING = b'"data:'
_HEADER_BYTES = 256  # "data:<media type>;<params>," is never longer in practice

# id(string put back) -> (that string, its JSON bytes in the body, quotes included). The string
# is held, so its id cannot be reused while the entry lives; set per parsed body.
_Sources = dict[int, tuple[str, memoryview]]
_SOURCES: ContextVar[_Sources | None] = ContextVar("vlmgw_data_url_sources", default=None)


def loads_chat_body(body: bytes) -> Any:
    """`orjson.loads(body)`, faster for a body with long data URLs in its image parts."""
    spans = _long_data_urls(body)
    if not spans:
        return orjson.loads(body)
    marker = secrets.token_hex(8)  # per call: no client can write it into its own body
    pieces, start = [], 0
    for index, (begin, end) in enumerate(spans):
        pieces += [body[start:begin], f'"vlmgw-{marker}-{index}"'.encode()]
        start = end
    pieces.append(body[start:])
    data = orjson.loads(b"".join(pieces))
    urls = {f"vlmgw-{marker}-{index}": span for index, span in enumerate(spans)}
    sources: _Sources = {}
    if not _put_back(data, urls, memoryview(body), sources):
        return orjson.loads(body)  # a marker landed somewhere else: parse it all, as ever
    _SOURCES.set(sources)
    return data


def json_source(value: str) -> memoryview | None:
    """The body's bytes `value` was made from, quotes included, when it is a long data URL that
    loads_chat_body put back in this request (this very object: the same characters, and those
    bytes are its JSON, no escapes); None otherwise (a string the resolver made anew)."""
    sources = _SOURCES.get()
    entry = sources.get(id(value)) if sources else None
    return entry[1] if entry is not None and entry[0] is value else None


def dumps_chat_body(data: Any) -> list[bytes | memoryview]:
    """`orjson.dumps(data)` (a chat request's dump), as pieces to write one after the other:
    each data URL still as loads_chat_body put it back is the client's own bytes, not copied
    nor serialised again. Those URLs in `data` are replaced on the way (it is the caller's
    throwaway dump). Sound because only the resolver's strict base64 check lets a data URL
    through unchanged, and the chat route resolves every image before a backend sees it."""
    if not _SOURCES.get():
        return [orjson.dumps(data)]
    marker = secrets.token_hex(8)
    kept: list[memoryview] = []
    for holder, key in _data_urls(data):
        source = json_source(holder[key])
        if source is not None:
            holder[key] = f"vlmgw-{marker}-{len(kept)}"
            kept.append(source)
    out = orjson.dumps(data)
    if not kept:
        return [out]
    view, start = memoryview(out), 0
    pieces: list[bytes | memoryview] = []
    for index, source in enumerate(kept):
        placeholder = f'"vlmgw-{marker}-{index}"'.encode()
        at = out.index(placeholder, start)  # orjson writes them in the order they were set
        pieces += [view[start:at], source]
        start = at + len(placeholder)
    pieces.append(view[start:])
    return pieces


def _long_data_urls(body: bytes) -> list[tuple[int, int]]:
    """(start, end) of each long string opening with "data: whose bytes are its value: the
    quotes included, so body[start:end] is the JSON string."""
    spans: list[tuple[int, int]] = []
    begin = body.find(_OPENING)
    while begin != -1:
        end = body.find(b'"', begin + 1)
        if end == -1:
            break
        if end - begin > LONG_DATA_URL_BYTES and _plain(body, begin + 1, end):
            spans.append((begin, end + 1))
        begin = body.find(_OPENING, end + 1)
    return spans


def _plain(body: bytes, start: int, end: int) -> bool:
    """No escape anywhere and a printable header: the bytes are the string's value."""
    if body.find(b"\\", start, end) != -1:
        return False
    comma = body.find(b",", start, min(end, start + _HEADER_BYTES))
    header = body[start:comma] if comma != -1 else b""
    return header.isascii() and header.decode("ascii").isprintable()


def _put_back(
    data: Any, urls: dict[str, tuple[int, int]], raw: memoryview, sources: _Sources
) -> bool:
    """Replace each marker with its data URL, in media parts only, noting each one's bytes in
    `sources`; False if any marker is elsewhere (or missing), or a payload is not ASCII."""
    found = 0
    for holder, key in _data_urls(data):
        span = urls.get(holder[key])
        if span is None:
            continue
        try:
            value = holder[key] = str(raw[span[0] + 1 : span[1] - 1], "ascii")
        except UnicodeDecodeError:
            return False
        sources[id(value)] = (value, raw[span[0] : span[1]])
        found += 1
    return found == len(urls)


# Part type -> (the object holding its URL, the URL's key): the parts whose data URLs are long.
_URL_HOLDERS = {
    "image_url": ("image_url", "url"),
    "video_url": ("video_url", "url"),
    "audio_url": ("audio_url", "url"),
    "file": ("file", "file_data"),  # mapped onto video_url / audio_url (media/parts.py)
}


def _data_urls(data: Any) -> Iterator[tuple[dict[str, Any], str]]:
    """(holder, key) of each string URL in the messages' image, video, audio and file parts:
    `holder[key]` is the URL."""
    messages = data.get("messages") if isinstance(data, dict) else None
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            where = _URL_HOLDERS.get(str(part.get("type"))) if isinstance(part, dict) else None
            if where is None:
                continue
            holder = part.get(where[0])
            if isinstance(holder, dict) and isinstance(holder.get(where[1]), str):
                yield holder, where[1]
