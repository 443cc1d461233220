"""loads_chat_body: always orjson.loads's answer, whichever way it gets there."""

from __future__ import annotations

import contextvars
import copy
import functools
import random

import orjson
import pytest

from vlm_gateway.core import chat_body
from vlm_gateway.core.chat_body import (
    LONG_DATA_URL_BYTES,
    dumps_chat_body,
    json_source,
    loads_chat_body,
)

PAYLOAD = "iVBORw0KGgo" + "A" * LONG_DATA_URL_BYTES  # long enough to be cut out
URL = f"data:image/png;base64,{PAYLOAD}"


def chat(*parts: object, text: object = "what?") -> dict:
    content = [{"type": "text", "text": text}] + [
        {"type": "image_url", "image_url": {"url": url, "detail": "auto"}} for url in parts
    ]
    return {"model": "m", "messages": [{"role": "user", "content": content}], "top_k": 3}


def same_as_orjson(body: bytes) -> None:
    try:
        expected = orjson.loads(body)
    except orjson.JSONDecodeError:
        with pytest.raises(orjson.JSONDecodeError):
            loads_chat_body(body)
        return
    assert loads_chat_body(body) == expected


def test_long_data_urls_come_back_whole_and_unparsed(monkeypatch):
    body = orjson.dumps(chat(URL, URL.replace("AAAA", "BBBB", 1)))
    parsed: list[int] = []
    real_loads = orjson.loads
    monkeypatch.setattr(chat_body.orjson, "loads", lambda b: parsed.append(len(b)) or real_loads(b))
    assert loads_chat_body(body) == real_loads(body)
    assert parsed == [len(body) - 2 * len(URL) + 2 * len("vlmgw-0123456789abcdef-0")]


@pytest.mark.parametrize(
    "body",
    [
        # escaped slashes (PHP's json_encode): not plain bytes, parsed whole
        orjson.dumps(chat(URL)).replace(b"image/png", b"image\\/png"),
        # a long data URL as text, not in an image part
        orjson.dumps(chat(text=URL)),
        orjson.dumps({"model": "m", "messages": [{"role": "user", "content": URL}]}),
        orjson.dumps({"model": "m", "prompt": URL}),
        # an image part of another type, a key, a duplicate key that wins
        orjson.dumps(chat(URL)).replace(b'"type":"image_url"', b'"type":"input_image"'),
        # a control character in a payload that no resolver will check: refused as JSON
        orjson.dumps(chat(URL))
        .replace(b'"type":"image_url"', b'"type":"input_image"')
        .replace(b"AAAA", b"A\x01AA", 1),
        orjson.dumps({URL: 1, "messages": []}),
        orjson.dumps(chat(URL)).replace(b'"detail"', b'"url":"x","d"'),
        # non-ASCII in the payload, a control character in the header: orjson decides
        orjson.dumps(chat(URL + "é")),
        orjson.dumps(chat(URL)).replace(b"image/png", b"image/\x01png"),
        # not JSON at all, cut in the middle of a data URL, or not an object
        orjson.dumps(chat(URL))[:-40],
        b'["' + URL.encode() + b'"]',
        b'"' + URL.encode() + b'"',
    ],
)
def test_anything_else_gives_exactly_what_orjson_gives(body):
    same_as_orjson(body)


def test_a_marker_written_by_the_client_is_just_text():
    body = orjson.dumps(chat(URL, text="vlmgw-0000000000000000-0"))
    assert loads_chat_body(body) == orjson.loads(body)


def test_random_damage_never_makes_it_differ_from_orjson():
    """Bytes changed at random in a body with two long data URLs: the same answer or the same
    error as orjson, but for a control character inside a base64 payload, which JSON refuses
    and this lets through (the resolver's strict base64 refuses it instead)."""
    rng = random.Random(14)
    body = orjson.dumps(chat(URL, "data:image/jpeg;base64," + PAYLOAD[::-1]))
    specials = b'"\\,:{}[] \x01\xc3\xa9'
    for _ in range(400):
        damaged = bytearray(body)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(damaged))
            damaged[at] = rng.choice(specials) if rng.random() < 0.9 else rng.randrange(256)
        damaged_bytes = bytes(damaged)
        try:
            expected = orjson.loads(damaged_bytes)
        except orjson.JSONDecodeError:
            try:
                got = loads_chat_body(damaged_bytes)
            except orjson.JSONDecodeError:
                continue
            assert _control_character_in_a_payload(got), damaged_bytes[:200]
            continue
        assert loads_chat_body(damaged_bytes) == expected


def _control_character_in_a_payload(parsed: dict) -> bool:
    urls = [
        part["image_url"]["url"]
        for message in parsed["messages"]
        for part in message["content"]
        if part.get("type") == "image_url"
    ]
    return any(any(ord(c) < 0x20 for c in url.partition(",")[2]) for url in urls)


def image_urls(data: dict) -> list:
    return [p["image_url"]["url"] for p in data["messages"][0]["content"] if "image_url" in p]


def in_a_new_context(test):
    """Each request is served in its own task, so its own context: so is each of these."""

    @functools.wraps(test)
    def run() -> None:
        contextvars.Context().run(test)

    return run


@in_a_new_context
def test_unchanged_data_urls_are_dumped_as_views_of_the_clients_own_bytes():
    other = URL.replace("AAAA", "BBBB", 1)
    body = orjson.dumps(chat(URL, other))
    data = loads_chat_body(body)
    pieces = dumps_chat_body(copy.deepcopy(data))  # a deep copy keeps the very strings
    assert b"".join(pieces) == orjson.dumps(data)
    views = [bytes(p) for p in pieces if isinstance(p, memoryview) and p.obj is body]
    assert views == [b'"' + URL.encode() + b'"', b'"' + other.encode() + b'"']
    assert [bytes(json_source(url) or b"") for url in image_urls(data)] == views


@in_a_new_context
def test_a_changed_or_merely_equal_string_is_serialised_as_ever():
    body = orjson.dumps(chat(URL, URL.replace("AAAA", "BBBB", 1)))
    data = loads_chat_body(body)
    first, second = data["messages"][0]["content"][1:]
    first["image_url"]["url"] = "data:image/jpeg;base64," + PAYLOAD  # what the resolver made
    url = second["image_url"]["url"]
    second["image_url"]["url"] = equal = "".join([url[:9], url[9:]])  # a new object
    assert equal == url and equal is not url
    assert json_source(equal) is None
    pieces = dumps_chat_body(copy.deepcopy(data))
    assert b"".join(pieces) == orjson.dumps(data)
    assert not any(isinstance(p, memoryview) and p.obj is body for p in pieces)


@in_a_new_context
def test_a_body_parsed_whole_has_no_bytes_to_reuse():
    """Escaped slashes: the string is not its bytes, so it is serialised again (unescaped)."""
    body = orjson.dumps(chat(URL)).replace(b"image/png", b"image\\/png")
    data = loads_chat_body(body)
    assert image_urls(data) == [URL] and json_source(URL) is None
    assert dumps_chat_body(copy.deepcopy(data)) == [orjson.dumps(data)]


def test_another_requests_bytes_are_not_seen():
    body = orjson.dumps(chat(URL))
    data = contextvars.Context().run(loads_chat_body, body)
    assert contextvars.Context().run(json_source, image_urls(data)[0]) is None
