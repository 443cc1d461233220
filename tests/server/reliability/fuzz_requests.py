"""Hypothesis strategies for the fuzz test: requests for every route of the gateway, from
well-formed to nonsense, built so that none makes the gateway reach outside loopback (image
URLs are data URLs, blocked addresses or schemeless text: never a host to resolve)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from tests.support.images import png_data_url
from tests.support.media import b64, data_url, noise_wav, video_bytes, wav_bytes

MODELS = st.sampled_from(["m", "text-only", "no-such-model", ""]) | st.integers() | st.none()
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # nan and inf too: not JSON, the body parser's to refuse
    | st.text(max_size=20)
)
JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
SAFE_TEXT = st.text(st.characters(blacklist_characters=":/\\", codec="utf-8"), max_size=30)
IMAGE_URLS = (
    st.sampled_from(
        [
            png_data_url(4, 4),
            "data:image/png;base64,!!!not-base64",
            "data:image/png;base64,",
            "data:text/plain;base64,aGVsbG8=",
            "http://127.0.0.1:9/cat.png",  # loopback: refused by the SSRF guard
            "http://[::1]:9/x.png",
            "http://169.254.169.254/latest",
            "file:///etc/passwd",
            "ftp://127.0.0.1/x",
        ]
    )
    | SAFE_TEXT
    | st.builds(lambda b: "data:image/png;base64," + b.hex(), st.binary(max_size=40))
)

_MP4 = video_bytes(seconds=0.5, size=(32, 32))
_WAV = wav_bytes(seconds=0.2)
MEDIA_URLS = (
    st.sampled_from(
        [
            data_url(_MP4, "video/mp4"),
            data_url(_MP4[: len(_MP4) // 2], "video/mp4"),  # truncated
            data_url(_WAV, "audio/wav"),
            data_url(noise_wav(256), "audio/wav"),
            data_url(_MP4, "image/png"),
            "data:video/mp4;base64,!!!",
            "http://127.0.0.1:9/clip.mp4",  # loopback: refused by the SSRF guard
            "http://169.254.169.254/latest",
            "file:///etc/passwd",
        ]
    )
    | SAFE_TEXT
    | st.builds(lambda b: "data:video/mp4;base64," + b64(b), st.binary(max_size=64))
)
MEDIA_PARTS = (
    st.fixed_dictionaries(
        {"type": st.just("video_url"), "video_url": st.fixed_dictionaries({"url": MEDIA_URLS})}
    )
    | st.fixed_dictionaries(
        {"type": st.just("audio_url"), "audio_url": st.fixed_dictionaries({"url": MEDIA_URLS})}
    )
    | st.fixed_dictionaries(
        {
            "type": st.just("input_audio"),
            "input_audio": st.fixed_dictionaries(
                {
                    "data": st.sampled_from([b64(_WAV), b64(_MP4), "!!", ""]) | SAFE_TEXT,
                    "format": st.sampled_from(["wav", "mp3", "flac", "mp4"]) | SAFE_TEXT,
                }
            ),
        }
    )
    | st.fixed_dictionaries(
        {
            "type": st.just("file"),
            "file": st.fixed_dictionaries({}, optional={"file_data": MEDIA_URLS}),
        }
    )
)


@dataclass
class FuzzRequest:
    method: str
    path: str
    body: bytes | None = None
    files: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return strategy | JSON  # a field of the right shape, or anything at all


def _object(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(required, optional=optional)


CHAT_PARTS = st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)})
    | st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": IMAGE_URLS})}
    )
    | MEDIA_PARTS
    | JSON,
    max_size=3,
)
CHAT_MESSAGES = st.lists(
    _object(
        {
            "role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "x"]),
            "content": st.text(max_size=30) | CHAT_PARTS | JSON,
        },
        {"name": st.text(max_size=5)},
    )
    | JSON,
    max_size=3,
)
SAMPLING = {
    "max_tokens": _maybe(st.integers(-5, 2**33)),
    "temperature": _maybe(st.floats(-1, 3)),
    "top_p": _maybe(st.floats(-1, 2)),
    "n": _maybe(st.integers(-1, 200)),
    "stream": _maybe(st.booleans()),
    "stop": _maybe(st.lists(st.text(max_size=4), max_size=5)),
    "seed": _maybe(st.integers()),
}
CHAT = _object({"model": MODELS, "messages": CHAT_MESSAGES}, SAMPLING)
COMPLETIONS = _object({"model": MODELS, "prompt": _maybe(st.text(max_size=40))}, SAMPLING)
RESPONSES = _object(
    {
        "model": MODELS,
        "input": st.text(max_size=30)
        | st.lists(
            _object(
                {
                    "role": st.sampled_from(["user", "assistant", "system"]),
                    "content": st.lists(
                        st.fixed_dictionaries(
                            {"type": st.just("input_image"), "image_url": IMAGE_URLS}
                        )
                        | st.fixed_dictionaries(
                            {"type": st.just("input_text"), "text": st.text(max_size=9)}
                        )
                        | JSON,
                        max_size=3,
                    ),
                },
                {},
            )
            | JSON,
            max_size=2,
        )
        | JSON,
    },
    {"max_output_tokens": _maybe(st.integers(-3, 99)), "stream": _maybe(st.booleans())},
)
ANTHROPIC_BLOCK = (
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=9)})
    | st.fixed_dictionaries(
        {
            "type": st.just("image"),
            "source": st.fixed_dictionaries({"type": st.just("url"), "url": IMAGE_URLS})
            | st.fixed_dictionaries(
                {
                    "type": st.just("base64"),
                    "media_type": st.sampled_from(["image/png", "image/gif", "text/html"]),
                    "data": st.text(max_size=30),
                }
            ),
        }
    )
    | JSON
)
MESSAGES = _object(
    {
        "model": MODELS,
        "max_tokens": _maybe(st.integers(-3, 2**40)),
        "messages": st.lists(
            _object(
                {
                    "role": st.sampled_from(["user", "assistant", "system"]),
                    "content": st.text(max_size=20) | st.lists(ANTHROPIC_BLOCK, max_size=3),
                },
                {},
            )
            | JSON,
            max_size=3,
        ),
    },
    {"system": _maybe(st.text(max_size=9)), "stream": _maybe(st.booleans())},
)
BATCH = _object(
    {
        "input_file_id": _maybe(st.text(max_size=12)),
        "endpoint": _maybe(st.sampled_from(["/v1/chat/completions", "/v1/completions"])),
        "completion_window": _maybe(st.just("24h")),
    },
    {"metadata": JSON},
)
_POST_BODIES = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/responses": RESPONSES,
    "/v1/messages": MESSAGES,
    "/v1/batches": BATCH,
}
SEGMENT = st.text(max_size=16).map(lambda s: quote(s, safe="")) | st.just("")


def _json_post(path: str) -> st.SearchStrategy[FuzzRequest]:
    bodies = _POST_BODIES[path].map(_dumps) | JSON.map(_dumps) | st.binary(max_size=64)
    return bodies.map(lambda body: FuzzRequest("POST", path, body))


def _gets() -> st.SearchStrategy[FuzzRequest]:
    paths = st.sampled_from(["/health", "/ready", "/metrics", "/v1/models", "/v1/batches"]) | (
        st.sampled_from(
            ["/v1/models/{}", "/v1/files/{}", "/v1/files/{}/content", "/v1/batches/{}", "/{}"]
        ).flatmap(lambda template: SEGMENT.map(template.format))
    )
    return paths.map(lambda path: FuzzRequest("GET", path))


def _others() -> st.SearchStrategy[FuzzRequest]:
    cancel = SEGMENT.map(lambda s: FuzzRequest("POST", f"/v1/batches/{s}/cancel"))
    delete = SEGMENT.map(lambda s: FuzzRequest("DELETE", f"/v1/files/{s}"))
    upload = st.tuples(st.binary(max_size=200), st.text(max_size=10)).map(
        lambda t: FuzzRequest(
            "POST", "/v1/files", files={"file": ("in.jsonl", t[0])}, data={"purpose": t[1]}
        )
    )
    raw_upload = st.binary(max_size=64).map(lambda b: FuzzRequest("POST", "/v1/files", b))
    return cancel | delete | upload | raw_upload


WELL_FORMED_PARTS = st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)})
    | st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": IMAGE_URLS})}
    ),
    min_size=1,
    max_size=3,
)
# Well-formed requests too, so the fuzz also reaches the models and their streams.
VALID_CHAT = _object(
    {
        "model": st.sampled_from(["m", "text-only"]),
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.just("user"), "content": st.text(max_size=20) | WELL_FORMED_PARTS}
            ),
            min_size=1,
            max_size=2,
        ),
    },
    {"stream": st.booleans(), "max_tokens": st.integers(1, 16), "temperature": st.floats(0, 2)},
).map(lambda body: FuzzRequest("POST", "/v1/chat/completions", _dumps(body)))

REQUESTS = st.one_of(VALID_CHAT, *[_json_post(path) for path in _POST_BODIES], _gets(), _others())
