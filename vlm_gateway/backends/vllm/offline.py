"""A managed vLLM model run by vLLM's offline engine, for a caption run that owns the model.

The engine lives in a worker process (offline_worker.py) under vLLM's own interpreter, found
from the entry's `command`. This side prepares each image in the gateway's process pool into
a spool directory (the exact bytes the online path would send, so captions come out the same),
hands the worker its path, and matches the worker's replies to the waiting callers. The worker
batches whatever is waiting, so the engine sees full batches however the images trickle in.
Videos and audio files are spooled as they are (the caller has checked them with the gateway's
own resolver) and read by vLLM from there, as `vllm serve` reads a `file:` URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from vlm_gateway.backends.vllm.settings import VllmBackendSettings
from vlm_gateway.images.decode import ImageLimits
from vlm_gateway.images.pool import ImagePreparer
from vlm_gateway.images.prepare import prepare_file_to_spool
from vlm_gateway.launch.vllm_command import first_max_model_len

WORKER = Path(__file__).with_name("offline_worker.py")
_REPLY_LIMIT = 1 << 24  # a reply line is one caption: 16 MiB is far beyond any


class OfflineEngineError(Exception):
    """The worker could not start, or stopped: the run cannot go on."""


def vllm_python(command: list[str]) -> str | None:
    """The interpreter that runs `command[0]` (a `vllm` console script or a python): the
    `python` beside it in its venv, else the script's `#!` line; None if neither is found."""
    executable = shutil.which(command[0])
    if executable is None:
        return None
    path = Path(executable)
    if path.name.startswith("python"):
        return str(path)
    sibling = path.with_name("python")
    if sibling.exists():
        return str(sibling)
    try:
        first = path.read_bytes()[:512].split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        return None
    interpreter = first[2:].strip().split(" ")[0] if first.startswith("#!") else ""
    return interpreter if interpreter and Path(interpreter).exists() else None


def engine_flags(entry: VllmBackendSettings, spool: str, media: Sequence[str] = ()) -> list[str]:
    """The engine's flags as `vllm serve` gets them from the entry (the API server's own flags
    are left to the worker to ignore), with the spool as the only readable media folder;
    `media`: the entry's media flags (processes.media_flags)."""
    flags = ["--allowed-local-media-path", spool, *media]
    length = first_max_model_len(entry.max_model_len, entry.max_model_len_cap, entry.model)
    if length is not None:
        flags += ["--max-model-len", str(length)]
    if entry.gpu_memory_utilization is not None:
        flags += ["--gpu-memory-utilization", f"{entry.gpu_memory_utilization:g}"]
    if entry.enable_prefix_caching:
        flags.append("--enable-prefix-caching")
    return flags + list(entry.extra_args)


@dataclass(frozen=True)
class OfflineRequest:
    prompt: str
    max_tokens: int
    temperature: float
    max_batch: int


class OfflineEngine:
    """One worker process; `caption()` may be awaited by many callers at once."""

    def __init__(
        self,
        entry: VllmBackendSettings,
        python: str,
        preparer: ImagePreparer,
        log: Path,
        media_flags: Sequence[str] = (),
    ) -> None:
        self.entry, self.python, self.preparer, self.log_path = entry, python, preparer, log
        self.media_flags = tuple(media_flags)
        self._spool = tempfile.TemporaryDirectory(prefix="vlm-gateway-spool-")
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None
        self._stopped: str | None = None

    async def start(self, request: OfflineRequest) -> None:
        """Launch the worker and wait until its engine is up."""
        env = os.environ | self.entry.env
        if self.entry.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in self.entry.gpus)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self._proc = await asyncio.create_subprocess_exec(
            self.python,
            str(WORKER),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            env=env,
            limit=_REPLY_LIMIT,
            start_new_session=True,
        )
        config = {
            "model": self.entry.model,
            "engine_args": engine_flags(self.entry, self._spool.name, self.media_flags),
            "chat_template": self.entry.chat_template,
            "spool": self._spool.name,
            **request.__dict__,
        }
        self._send(config)
        first = await self._reply()
        if first.get("ready") is not True:
            raise OfflineEngineError(self._why(first.get("fatal", "it exited while starting")))
        self._reader = asyncio.create_task(self._dispatch())

    async def caption(self, source: str, limits: ImageLimits, what: str) -> dict[str, Any]:
        """{"caption", "tokens"} or {"error"} for one local image. ImageError, OSError: the
        image itself was refused or unreadable (the caller's error line)."""
        spooled = await self.preparer.run(
            what, prepare_file_to_spool, source, limits, what, self._spool.name
        )
        return await self._ask({"path": spooled})

    async def caption_media(self, data: bytes, modality: str, suffix: str) -> dict[str, Any]:
        """{"caption", "tokens"} or {"error"} for one video or audio file's `data`, already
        checked; `suffix` (".mp4", ".wav") names its kind for loaders that go by the name."""
        spooled = await asyncio.to_thread(_spool_bytes, self._spool.name, data, suffix)
        return await self._ask({"path": spooled, "modality": modality})

    async def _ask(self, item: dict[str, Any]) -> dict[str, Any]:
        """Send one spooled file to the worker and wait for its reply; the file goes after."""
        try:
            if self._stopped is not None:
                raise OfflineEngineError(self._stopped)
            self._next_id += 1
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._waiting[self._next_id] = future
            self._send({"id": self._next_id, **item})
            return await future
        finally:
            with contextlib.suppress(OSError):
                os.unlink(item["path"])

    async def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()  # the worker finishes what it has and exits
            try:
                await asyncio.wait_for(proc.wait(), self.entry.stop_grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._log is not None:
            self._log.close()
        self._spool.cleanup()

    def _send(self, message: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(message).encode() + b"\n")

    async def _reply(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        line = await self._proc.stdout.readline()
        return json.loads(line) if line.strip() else {}

    async def _dispatch(self) -> None:
        while True:
            reply = await self._reply()
            if not reply:
                break
            future = self._waiting.pop(reply.pop("id"), None)
            if future is not None and not future.done():
                future.set_result(reply)
        assert self._proc is not None
        self._stopped = self._why(f"it exited with code {await self._proc.wait()}")
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(OfflineEngineError(self._stopped))
        self._waiting.clear()

    def _why(self, what: str) -> str:
        tail = ""
        with contextlib.suppress(OSError):
            tail = self.log_path.read_bytes()[-2000:].decode(errors="replace")
        return f"vLLM's offline engine stopped: {what}. Its log ({self.log_path}) ends:\n{tail}"


def _spool_bytes(spool: str, data: bytes, suffix: str) -> str:
    descriptor, path = tempfile.mkstemp(suffix=suffix, dir=spool)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    return path


def offline_python_or_none(entry: object) -> str | None:
    """vLLM's interpreter for a `backend: vllm` entry; None for any other entry."""
    if not isinstance(entry, VllmBackendSettings):
        return None
    return vllm_python(entry.command)
