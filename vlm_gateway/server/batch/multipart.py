"""Receive a `multipart/form-data` upload (what `client.files.create` sends) straight to
disk. The gateway has no python-multipart dependency: the body is spooled to a file as it
arrives, then the parts are found with mmap in a worker thread, so a 200 MB upload never sits
in memory nor blocks the event loop."""

from __future__ import annotations

import asyncio
import mmap
import re
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from vlm_gateway.core.errors import InvalidRequestError, PayloadTooLargeError

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_DISPOSITION = re.compile(rb'(\w+)="((?:[^"\\]|\\.)*)"')
_SPOOL_CHUNK = 1 << 20
_MAX_FIELD_BYTES = 4096
_SLACK = 64 * 1024  # room for part headers and small fields beyond the file itself


@dataclass
class Upload:
    """The parsed form: text fields, and the one file part (written to `path`)."""

    path: Path
    filename: str
    size: int
    fields: dict[str, str] = field(default_factory=dict)


def _too_large(max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The file is larger than the limit of {max_bytes} bytes.",
        param="file",
        code="file_too_large",
    )


async def receive_upload(request: Request, spool: Path, dest: Path, max_bytes: int) -> Upload:
    match = _BOUNDARY.search(request.headers.get("content-type", ""))
    if not request.headers.get("content-type", "").startswith("multipart/form-data") or not match:
        raise InvalidRequestError("Upload files as multipart/form-data (fields: file, purpose).")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + _SLACK:
        raise _too_large(max_bytes)
    try:
        await _spool(request, spool, max_bytes + _SLACK)
        upload = await asyncio.to_thread(_split, spool, match.group(1).encode(), dest)
    finally:
        spool.unlink(missing_ok=True)
    if upload.size > max_bytes:
        dest.unlink(missing_ok=True)
        raise _too_large(max_bytes)
    return upload


async def _spool(request: Request, spool: Path, limit: int) -> None:
    received, buffer = 0, bytearray()
    with open(spool, "wb") as out:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(limit - _SLACK)
            buffer += chunk
            if len(buffer) >= _SPOOL_CHUNK:
                await asyncio.to_thread(out.write, bytes(buffer))
                buffer.clear()
        await asyncio.to_thread(out.write, bytes(buffer))


def _split(spool: Path, boundary: bytes, dest: Path) -> Upload:
    if spool.stat().st_size == 0:
        raise InvalidRequestError("The upload is empty.", param="file")
    with (
        open(spool, "rb") as handle,
        mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as body,
    ):
        delimiter = b"\r\n--" + boundary
        pos = body.find(b"--" + boundary)
        if pos < 0:
            raise InvalidRequestError("The multipart body has no parts.")
        pos += len(boundary) + 2
        fields: dict[str, str] = {}
        upload: Upload | None = None
        while body[pos : pos + 2] == b"\r\n":
            head_end = body.find(b"\r\n\r\n", pos)
            end = body.find(delimiter, head_end)
            if head_end < 0 or end < 0:
                raise InvalidRequestError("The multipart body is truncated.")
            params = dict(_DISPOSITION.findall(body[pos + 2 : head_end]))
            start = head_end + 4
            name = params.get(b"name", b"").decode(errors="replace")
            if b"filename" in params and name == "file":
                _copy(body, start, end, dest)
                upload = Upload(
                    dest, params[b"filename"].decode(errors="replace") or "upload", end - start
                )
            elif end - start <= _MAX_FIELD_BYTES:
                fields[name] = body[start:end].decode(errors="replace")
            pos = end + len(delimiter)
    if upload is None:
        raise InvalidRequestError("Missing required parameter: 'file'.", param="file")
    upload.fields = fields
    return upload


def _copy(body: mmap.mmap, start: int, end: int, dest: Path) -> None:
    with open(dest, "wb") as out:
        for offset in range(start, end, _SPOOL_CHUNK):
            out.write(body[offset : min(offset + _SPOOL_CHUNK, end)])
