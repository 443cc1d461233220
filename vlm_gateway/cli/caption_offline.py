"""`caption` with vLLM's offline engine, when the run owns a `backend: vllm` model.

No `vllm serve`, no HTTP, no base64: images are prepared in the pool into a spool directory and
the engine batches whatever is ready (backends/vllm/offline.py). The output lines, resume and
error lines are the gateway path's own: an image the gateway would refuse gets the same
"HTTP 400: ..." line, in the same words, so a file written half by one way and half by the
other reads as one run. Remote images (http(s), data URLs) need the gateway's guarded fetch:
`--engine auto` takes the gateway path for them.

Videos and audio files are checked by the gateway's own resolver (media/resolve.py: the model
takes that modality, the size, the PyAV probe, the length), in this process and before the
engine sees them, so a broken file gets the gateway path's error line word for word; what
passes is spooled as it is and read by vLLM from a `file:` URL.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from vlm_gateway.backends.vllm.offline import (
    OfflineEngine,
    OfflineEngineError,
    OfflineRequest,
    vllm_python,
)
from vlm_gateway.backends.vllm.processes import media_flags
from vlm_gateway.backends.vllm.settings import VllmBackendSettings
from vlm_gateway.cli.caption import (
    Captioner,
    CaptionError,
    CaptionJob,
    Summary,
    caption_all,
    chat_body,
    new_record,
)
from vlm_gateway.cli.caption_files import TYPES, Kind, kind_of_source
from vlm_gateway.cli.caption_images import data_url
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.errors import GatewayError
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.images.decode import ImageLimits
from vlm_gateway.images.pool import ImagePreparer
from vlm_gateway.media.resolve import RequestResolver
from vlm_gateway.server.door.install import open_request_resolver

ENGINES = ("auto", "gateway", "offline")
# What the gateway calls the one image of a caption request, so error lines read the same.
WHAT = "The image in messages[0].content[0].image_url"
# Images in flight: twice the largest batch, so that the pool prepares the next batch while
# the engine runs one (vLLM's own max_num_seqs then decides how many run per step).
BATCH = 128
IN_FLIGHT = 2 * BATCH


def offline_engine_for(
    settings: GatewaySettings, job: CaptionJob
) -> tuple[VllmBackendSettings, str] | None:
    """(entry, vLLM's python) when this run should use the offline engine, else None.
    CaptionError when `--engine offline` was asked for and cannot be had."""
    if job.engine == "gateway":
        return None
    entries = settings.entries_for(job.model)
    entry = entries[0] if entries else None
    python = vllm_python(entry.command) if isinstance(entry, VllmBackendSettings) else None
    remote = [s for s in job.sources if s.startswith(("http://", "https://", "data:"))]
    if job.engine == "auto":
        if isinstance(entry, VllmBackendSettings) and python and not remote:
            return entry, python
        return None
    if not isinstance(entry, VllmBackendSettings):
        kind = f"backend {entry.backend}" if entry is not None else "not in the config"
        raise CaptionError(f"--engine offline needs a `backend: vllm` model; {job.model} is {kind}")
    if python is None:
        raise CaptionError(
            f"--engine offline: cannot find the python that runs {entry.command[0]!r}"
        )
    if remote:
        raise CaptionError(
            f"--engine offline captions local files only ({remote[0][:80]} is not); "
            "use --engine gateway for URLs"
        )
    return entry, python


def _log_path(settings: GatewaySettings, entry: VllmBackendSettings) -> Path:
    return Path(entry.log_dir or Path(settings.data_dir) / "logs") / f"{entry.name}-offline.log"


def offline_captioner(
    engine: OfflineEngine, job: CaptionJob, limits: ImageLimits, resolver: RequestResolver
) -> Captioner:
    async def caption(source: str) -> dict[str, Any]:
        kind = kind_of_source(source, job.media)
        record = new_record(job, source, kind)
        try:
            if kind == "image":
                reply = await engine.caption(source, limits, WHAT)
            else:
                reply = await _caption_media(engine, job, source, kind, resolver)
        except GatewayError as exc:  # the gateway's 400 for this file, in its words
            record["error"] = f"HTTP {exc.status_code}: {exc.message}"
        except OSError as exc:
            record["error"] = f"cannot read the {kind}: {exc.strerror or exc}"
        except OfflineEngineError as exc:
            raise CaptionError(str(exc)) from None
        else:
            record["caption"], record["error"] = reply.get("caption"), reply.get("error")
        return record

    return caption


async def _caption_media(
    engine: OfflineEngine, job: CaptionJob, source: str, kind: Kind, resolver: RequestResolver
) -> dict[str, Any]:
    """The file as the gateway path would send it, checked by the gateway's resolver (a
    GatewayError: its 400), then captioned by the engine from the spool."""
    media = job.media.get(source)
    url = await asyncio.to_thread(data_url, source, media)
    request = ChatCompletionRequest.model_validate(chat_body(job, url, kind))
    await resolver.resolve(request)
    data = await asyncio.to_thread(Path(source).read_bytes)
    return await engine.caption_media(data, kind, _suffix(source, media.mime if media else None))


def _suffix(source: str, mime: str | None) -> str:
    """The file's own extension when it names its kind, else one for its MIME type (a video
    found in `clip.bin` is spooled as `.mp4`): some of vLLM's audio loaders go by the name."""
    own = Path(source).suffix.lower()
    if own in TYPES:
        return own
    return next((ext for ext, (_, known) in TYPES.items() if known == mime), "")


async def run_offline(
    job: CaptionJob,
    settings: GatewaySettings,
    chosen: tuple[VllmBackendSettings, str],
    ready_timeout: float,
) -> Summary:
    entry, python = chosen
    limits = settings.image_limits(job.model)
    assert limits is not None  # the entry exists
    preparer = ImagePreparer(settings.images.prepare_workers)
    flags = media_flags(settings, entry)
    engine = OfflineEngine(entry, python, preparer, _log_path(settings, entry), flags)
    # The gateway's resolver checks videos and audio files; images have the pool above.
    no_pool = settings.images.model_copy(update={"prepare_workers": 0})
    checks = open_request_resolver(settings.model_copy(update={"images": no_pool}))
    print(
        f"starting vLLM's offline engine for {job.model!r} (log: {engine.log_path}); "
        f"up to {ready_timeout:g} s",
        file=sys.stderr,
        flush=True,
    )
    request = OfflineRequest(job.prompt, job.max_tokens, job.temperature, BATCH)
    try:
        try:
            # The pool's processes start meanwhile, not on the clock of the first images.
            warm_pool = [preparer.run("warm-up", os.getpid) for _ in range(preparer.workers)]
            await asyncio.wait_for(asyncio.gather(engine.start(request), *warm_pool), ready_timeout)
        except TimeoutError:
            raise CaptionError(
                f"vLLM's offline engine was not up after {ready_timeout:g} s"
            ) from None
        except OfflineEngineError as exc:
            raise CaptionError(str(exc)) from None
        wide = CaptionJob(**{**job.__dict__, "concurrency": max(job.concurrency, IN_FLIGHT)})
        async with checks as resolver:
            return await caption_all(offline_captioner(engine, job, limits, resolver), wide)
    finally:
        await engine.stop()
        await preparer.aclose()
