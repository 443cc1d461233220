"""`vlm-gateway caption`: caption every image under some paths into a JSONL file, resumably.

Two ways to reach the model, one client: with `--url` plain concurrent chat requests go to a
running gateway (or any OpenAI-compatible server); without it the gateway app itself is built
in-process from `--config` (its lifespan starts the backends) and the same requests go through
it over an in-memory ASGI transport, so routing, image checks and errors are the gateway's own.

Why plain requests and not the Batch API for `--url`: each caption is written to `--out` the
moment it arrives (a kill loses nothing but the requests in flight), nothing has to be
uploaded first (10,000 base64 images would be a large input file), and the concurrency is the
user's knob. The Batch API is there for clients that want the gateway to hold the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx
import orjson

from vlm_gateway.cli.caption_files import Kind, Media, kind_of_source
from vlm_gateway.cli.caption_images import ImageReader, served_limits
from vlm_gateway.cli.caption_progress import open_progress
from vlm_gateway.images.pool import ImagePreparer

if TYPE_CHECKING:
    from vlm_gateway.backends.registry import BackendRegistry
    from vlm_gateway.config.settings import GatewaySettings

DEFAULT_PROMPT = "Describe this image in one sentence."
_READY_POLL_S = 0.5
_RETRIES = 2


class CaptionError(Exception):
    """The run cannot start (bad path, unknown model, unreachable gateway): exit non-zero."""


@dataclass
class CaptionJob:
    sources: list[str]
    model: str
    out: Path
    prompt: str = DEFAULT_PROMPT
    concurrency: int = 32
    max_tokens: int = 64
    api_key: str | None = None
    temperature: float = 0.0  # greedy, as the seed's script: one caption per image, repeatable
    engine: str = "auto"  # without --url: auto | gateway | offline (caption_offline.py)
    # Local files' kinds and MIME types, as the walk found them (caption_files.py); a source
    # not in it is an image unless its URL says otherwise.
    media: dict[str, Media] = field(default_factory=dict)


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0  # already captioned by an earlier run
    captioned: int = 0
    errors: int = 0
    seconds: float = 0.0


# -- what to caption -----------------------------------------------------------------------------


def resume(out: Path) -> set[str]:
    """Images `out` already has a caption for. Error lines and a line cut short by a crash are
    dropped from the file (atomically), so those images are tried again and each image ends
    up with exactly one line."""
    if not out.exists():
        return set()
    kept, done = [], set()
    for raw in out.read_bytes().splitlines():
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("error") is None and "image" in record:
            kept.append(raw)
            done.add(record["image"])
    partial = out.with_name(out.name + ".resume")
    partial.write_bytes(b"".join(line + b"\n" for line in kept))
    os.replace(partial, out)
    return done


# -- the requests --------------------------------------------------------------------------------


def chat_body(job: CaptionJob, url: str, kind: Kind = "image") -> dict[str, Any]:
    """The one part first (its errors then name messages[0].content[0], whatever the prompt),
    as `image_url`, `video_url` or `audio_url`: the URL form of each, so a file's bytes go
    as a data URL whatever its kind, and vLLM's offline engine reads the same parts."""
    content: list[dict[str, Any]] = [{"type": f"{kind}_url", f"{kind}_url": {"url": url}}]
    if job.prompt:
        content.append({"type": "text", "text": job.prompt})
    return {
        "model": job.model,
        "max_tokens": job.max_tokens,
        "temperature": job.temperature,
        "messages": [{"role": "user", "content": content}],
    }


async def _post(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    """One chat request; a dropped connection or a 502/503/504 is retried twice, since a long
    run meets a few of them (the server restarting a keep-alive connection, a replica that
    is momentarily down)."""
    for attempt in range(_RETRIES + 1):
        last = attempt == _RETRIES
        try:
            response = await client.post("/v1/chat/completions", json=body)
        except httpx.TransportError:
            if last:
                raise
        else:
            if response.status_code not in (502, 503, 504) or last:
                return response
        await asyncio.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def new_record(job: CaptionJob, source: str, kind: Kind) -> dict[str, Any]:
    """An output line before its answer. `image` names the source whatever its kind (resume
    and every reader of earlier files key on it); video and audio lines say their kind, image
    lines stay exactly as they were."""
    record: dict[str, Any] = {"image": source, "caption": None, "model": job.model, "error": None}
    if kind != "image":
        record["media"] = kind
    return record


async def caption_one(
    client: httpx.AsyncClient, job: CaptionJob, source: str, reader: ImageReader
) -> dict[str, Any]:
    kind = kind_of_source(source, job.media)
    record = new_record(job, source, kind)
    try:
        url = await reader.url(source, job.media.get(source))
        response = await _post(client, chat_body(job, url, kind))
        reply = response.json()
        if response.status_code != 200:
            error = reply.get("error") if isinstance(reply, dict) else None
            message = error.get("message") if isinstance(error, dict) else str(reply)[:500]
            record["error"] = f"HTTP {response.status_code}: {message}"
        else:
            record["caption"] = reply["choices"][0]["message"]["content"]
    except OSError as exc:
        record["error"] = f"cannot read the {kind}: {exc.strerror or exc}"
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        record["error"] = f"request failed: {type(exc).__name__}: {exc}"
    return record


# -- running -------------------------------------------------------------------------------------


Captioner = Callable[[str], Awaitable[dict[str, Any]]]  # a source -> its output record


def over_http(client: httpx.AsyncClient, job: CaptionJob, reader: ImageReader) -> Captioner:
    return lambda source: caption_one(client, job, source, reader)


async def caption_all(
    caption: Captioner, job: CaptionJob, progress_stream: TextIO | None = None
) -> Summary:
    images = job.sources
    done = await asyncio.to_thread(resume, job.out)
    todo = [source for source in images if source not in done]
    summary = Summary(total=len(images), skipped=len(images) - len(todo))
    pending = iter(todo)
    started = time.monotonic()
    # "files" once videos or audio files are among them: "images/s" would misname them.
    mixed = any(kind_of_source(source, job.media) != "image" for source in todo)
    unit = "files" if mixed else "images"
    progress = open_progress(len(todo), progress_stream or sys.stderr, unit)
    with open(job.out, "ab") as out, progress:

        async def worker() -> None:
            for source in pending:  # a shared iterator: each image is taken by one worker
                record = await caption(source)
                # A short line into the page cache: flushing it per image is what makes a kill
                # lose nothing, and costs microseconds, so it stays on the loop.
                out.write(orjson.dumps(record) + b"\n")
                out.flush()
                failed = record["error"] is not None
                summary.errors += failed
                summary.captioned += not failed
                progress.step(failed)

        await asyncio.gather(*(worker() for _ in range(max(1, min(job.concurrency, len(todo))))))
    summary.seconds = time.monotonic() - started
    return summary


@contextlib.asynccontextmanager
async def remote_client(url: str, job: CaptionJob) -> AsyncIterator[httpx.AsyncClient]:
    base = url.rstrip("/").removesuffix("/v1")
    headers = {"authorization": f"Bearer {job.api_key}"} if job.api_key else {}
    limits = httpx.Limits(
        max_connections=job.concurrency, max_keepalive_connections=job.concurrency
    )
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=httpx.Timeout(600, connect=10)
    ) as client:
        try:
            listing = (await client.get("/v1/models")).json()
        except (httpx.HTTPError, ValueError) as exc:
            raise CaptionError(f"cannot reach {base}/v1/models: {exc}") from None
        names = [m.get("id") for m in listing.get("data", [])] if isinstance(listing, dict) else []
        if job.model not in names:
            raise CaptionError(
                f"{base} does not serve the model {job.model!r} "
                f"(it serves: {', '.join(map(str, names)) or 'nothing'})"
            )
        yield client


@contextlib.asynccontextmanager
async def in_process_client(
    settings: GatewaySettings, job: CaptionJob, ready_timeout: float
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app from `settings`, started in this process and reached in memory."""
    from vlm_gateway.server.app import create_app
    from vlm_gateway.server.state import state_of

    if job.model not in settings.model_names():
        raise CaptionError(
            f"the config has no model {job.model!r} "
            f"(it has: {', '.join(settings.model_names()) or 'none'})"
        )
    # A scratch data dir: the app must not resume (and so run twice) the batches of a
    # gateway server that shares the configured one.
    scratch = tempfile.TemporaryDirectory(prefix="vlm-gateway-caption-")
    app = create_app(settings.model_copy(update={"data_dir": scratch.name}))
    with scratch:
        async with app.router.lifespan_context(app):
            await _wait_ready(state_of(app).registry, job.model, ready_timeout)
            headers = {"authorization": f"Bearer {job.api_key}"} if job.api_key else {}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://in-process", headers=headers, timeout=None
            ) as client:
                yield client


async def _wait_ready(registry: BackendRegistry, model: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        replicas = registry.replicas(model)
        if any(b.status.ready for b in replicas):
            return
        states = "; ".join(
            f"{b.status.state.value}" + (f" ({b.status.reason})" if b.status.reason else "")
            for b in replicas
        )
        if all(b.status.state.value in ("failed", "stopped") for b in replicas):
            raise CaptionError(f"the model {model!r} failed to start: {states}")
        if time.monotonic() > deadline:
            raise CaptionError(f"the model {model!r} was not ready after {timeout:g} s: {states}")
        if not announced:
            print(
                f"waiting for the model {model!r} to be ready ({states}); up to {timeout:g} s",
                file=sys.stderr,
                flush=True,
            )
            announced = True
        await asyncio.sleep(_READY_POLL_S)


async def run_caption(
    job: CaptionJob,
    url: str | None = None,
    settings: GatewaySettings | None = None,
    ready_timeout: float = 900.0,
) -> Summary:
    if url:
        async with remote_client(url, job) as client:
            listing = (await client.get("/v1/models")).json()
            reader = ImageReader(ImagePreparer(), served_limits(listing, job.model))
            try:
                return await caption_all(over_http(client, job, reader), job)
            finally:
                await reader.aclose()
    if settings is None:
        raise ValueError("run_caption needs a url or settings")
    from vlm_gateway.cli.caption_offline import offline_engine_for, run_offline

    offline = offline_engine_for(settings, job)
    if offline is not None:
        return await run_offline(job, settings, offline, ready_timeout)
    limits = settings.image_limits(job.model)
    reader = ImageReader(ImagePreparer(settings.images.prepare_workers), limits)
    if reader.preparer is not None:  # one pool per run: the gateway's check runs in a thread
        no_pool = settings.images.model_copy(update={"prepare_workers": 0})
        settings = settings.model_copy(update={"images": no_pool})
    try:
        async with in_process_client(settings, job, ready_timeout) as client:
            return await caption_all(over_http(client, job, reader), job)
    finally:
        await reader.aclose()
