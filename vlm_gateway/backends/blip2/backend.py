"""Backend `blip2`: BLIP-2 from transformers in the gateway's own process, with dynamic
micro-batching.

The event loop only validates, queues and awaits. Loading, image decoding and generation run
in worker threads. Requests that arrive within `batch_wait_ms` of the first queued one, up to
`max_batch_size` sequences (one per choice), are generated together; the next batch is taken
as soon as the previous one ends. Streaming is per token: the worker hands each row's new text
to its request after every decoding step.

torch and transformers are imported only by `vlm_gateway.backends.blip2.generate`, and that
only inside the loading thread, so a gateway with no blip2 model never pays for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlm_gateway.backends.base import Backend, State
from vlm_gateway.backends.blip2.request import (
    Blip2Prompt,
    Sampling,
    build_prompt,
    check_supported,
    decode_image,
    sampling_options,
)
from vlm_gateway.backends.inprocess import output as blip2_output
from vlm_gateway.backends.inprocess.worker import ModelThread, threadsafe
from vlm_gateway.core.errors import (
    ContextLengthExceededError,
    GatewayError,
    InvalidRequestError,
    ServiceUnavailableError,
)
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.core.sse import DONE

if TYPE_CHECKING:
    import torch

    from vlm_gateway.backends.blip2.generate import LoadedBlip2, RowResult, RowSpec

    # What a streaming request's queue carries, per choice: new text, then its result or error.
    _Event = tuple[int, str | RowResult | GatewayError]
    _GenerateBatch = Callable[[LoadedBlip2, list[RowSpec], threading.Event], list[RowResult]]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Pending:
    """One request in flight: a future per choice and, when streaming, its event queue."""

    futures: list[asyncio.Future[RowResult]]
    prompt_tokens: int
    events: asyncio.Queue[_Event] | None = None
    cancelled: bool = False

    def deliver(self, index: int, outcome: RowResult | GatewayError) -> None:
        future = self.futures[index]
        if not future.done():
            if isinstance(outcome, GatewayError):
                future.set_exception(outcome)
                future.exception()  # retrieved here: a cancelled reader never will
            else:
                future.set_result(outcome)
        if self.events is not None:
            self.events.put_nowait((index, outcome))


@dataclass(eq=False)
class _Row:
    spec: RowSpec
    pending: _Pending
    index: int


@dataclass
class _Stats:
    batches: int = 0
    sequences: int = 0
    largest_batch: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


class Blip2Backend(Backend):
    kind = "blip2"

    def __init__(
        self,
        name: str,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 16,
        batch_wait_ms: float = 5.0,
        context_length: int | None = None,
        default_max_tokens: int = 64,
    ) -> None:
        super().__init__(name)
        self.model_ref = model
        self._device, self._dtype = device, dtype
        self.max_batch_size = max_batch_size
        self._batch_wait = batch_wait_ms / 1000
        self._context_length = context_length
        self._default_max_tokens = default_max_tokens
        self._queue: asyncio.Queue[_Row] = asyncio.Queue()
        self._stopping = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._worker: ModelThread | None = None
        self._loaded: LoadedBlip2 | None = None
        self._row_spec: type[RowSpec] | None = None
        self._generate: _GenerateBatch | None = None
        self._stats = _Stats()
        self._noted_system = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.set_status(State.STARTING, f"loading {self.model_ref}")
        worker = self._worker = ModelThread(f"blip2-{self.name}")
        self._task = asyncio.create_task(self._load_then_serve(worker), name=f"blip2-{self.name}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_queued(ServiceUnavailableError(f"The model '{self.name}' is shutting down."))
        if self._worker is not None:
            self._worker.close()
        self._loaded = None
        await super().stop()

    async def _load_then_serve(self, worker: ModelThread) -> None:
        try:
            loaded = self._loaded = await worker.submit(self._load_blocking)
        except Exception as exc:
            reason = f"cannot load {self.model_ref}: {_short(exc)}"
            log.error("model %s: %s", self.name, reason)
            self.set_status(State.FAILED, reason)
            return
        log.info(
            "model %s: BLIP-2 loaded from %s on %s (%s), batches of up to %d",
            self.name,
            self.model_ref,
            loaded.device,
            str(loaded.dtype).removeprefix("torch."),
            self.max_batch_size,
        )
        self.set_status(State.READY)
        await self._batch_forever(worker)

    def _load_blocking(self) -> LoadedBlip2:
        try:
            from vlm_gateway.backends.blip2 import generate as blip2_generate
        except ImportError as exc:
            raise RuntimeError(
                f"the blip2 extra is not installed ({exc.name} is missing): "
                "pip install 'vlm-gateway[blip2]'"
            ) from None
        self._row_spec, self._generate = blip2_generate.RowSpec, blip2_generate.generate_batch
        return blip2_generate.load_blip2(
            self.model_ref, self._device, self._dtype, self._context_length
        )

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        loaded = self._loaded
        info.update(
            model=self.model_ref,
            device=str(loaded.device) if loaded else self._device,
            max_batch_size=self.max_batch_size,
            batch_wait_ms=self._batch_wait * 1000,
            context_length=loaded.context_length if loaded else None,
            batches=self._stats.batches,
            sequences=self._stats.sequences,
            largest_batch=self._stats.largest_batch,
        )
        return info

    # -- requests ---------------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest) -> dict[str, Any]:
        pending = await self._submit(request, events=None)
        try:
            results = await asyncio.gather(*pending.futures)
        finally:
            pending.cancelled = True  # the client went away: queued rows are dropped
        return blip2_output.chat_completion(self.name, results, pending.prompt_tokens)

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[bytes]:
        events: asyncio.Queue[_Event] = asyncio.Queue()
        pending = await self._submit(request, events=events)
        return self._stream(pending, events, request.wants_usage_in_stream)

    async def _stream(
        self, pending: _Pending, events: asyncio.Queue[_Event], include_usage: bool
    ) -> AsyncIterator[bytes]:
        writer = blip2_output.ChunkWriter(self.name, include_usage)
        try:
            for index in range(len(pending.futures)):
                yield writer.role(index)
            remaining, completion_tokens = len(pending.futures), 0
            while remaining:
                index, item = await events.get()
                if isinstance(item, str):
                    yield writer.content(index, item)
                elif isinstance(item, GatewayError):
                    raise item
                else:
                    remaining -= 1
                    completion_tokens += item.completion_tokens
                    yield writer.finish(index, item.finish_reason)
            if include_usage:
                yield writer.usage(pending.prompt_tokens, completion_tokens)
            yield DONE
        finally:
            pending.cancelled = True

    async def _submit(
        self, request: ChatCompletionRequest, events: asyncio.Queue[_Event] | None
    ) -> _Pending:
        """Validate, prepare and queue one row per choice; `events` only when streaming."""
        loaded = self._loaded
        if loaded is None or not self.status.ready:
            raise ServiceUnavailableError(f"The model '{self.name}' is not ready.")
        check_supported(request)
        prompt = build_prompt(request)
        sampling = sampling_options(request, loaded.vocab_size)
        self._note_ignored_system(prompt)
        prompt_ids, pixels = await asyncio.to_thread(_prepare, loaded, prompt)
        max_tokens = self._token_budget(loaded, len(prompt_ids), sampling.max_tokens)
        loop = asyncio.get_running_loop()
        pending = _Pending(
            futures=[loop.create_future() for _ in range(sampling.n)],
            prompt_tokens=len(prompt_ids),
            events=events,
        )
        for index in range(sampling.n):
            spec = self._row(prompt, prompt_ids, pixels, sampling, index, max_tokens, pending)
            self._queue.put_nowait(_Row(spec, pending, index))
        return pending

    def _row(
        self,
        prompt: Blip2Prompt,
        prompt_ids: list[int],
        pixels: torch.Tensor,
        sampling: Sampling,
        index: int,
        max_tokens: int,
        pending: _Pending,
    ) -> RowSpec:
        row_spec = self._row_spec
        assert row_spec is not None  # the load sets it before `_loaded`, checked by _submit
        events, on_text = pending.events, None
        if events is not None:
            on_text = threadsafe(lambda text: events.put_nowait((index, text)))
        return row_spec(
            prompt_ids=prompt_ids,
            pixel_values=pixels,
            max_new_tokens=max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seeds[index],
            stop=sampling.stop,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            logit_bias=sampling.logit_bias,
            strip_leading_space=not prompt.continues_text,
            on_text=on_text,
            is_cancelled=lambda: pending.cancelled,
        )

    def _token_budget(self, loaded: LoadedBlip2, prompt_tokens: int, requested: int | None) -> int:
        room = loaded.context_length - prompt_tokens
        if requested is None and room >= 1:
            return min(self._default_max_tokens, room)
        requested = requested or self._default_max_tokens
        if requested > room:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {loaded.context_length} tokens. However, "
                f"you requested {prompt_tokens + requested} tokens ({prompt_tokens} in the "
                f"messages, including the image's {loaded.num_query_tokens} query tokens, and "
                f"{requested} in the completion). Please reduce the length of the messages or "
                "completion.",
                param="messages",
            )
        return requested

    def _note_ignored_system(self, prompt: Blip2Prompt) -> None:
        if prompt.ignored_system:
            level = logging.DEBUG if self._noted_system else logging.INFO
            log.log(level, "model %s: system/developer messages are ignored by BLIP-2", self.name)
            self._noted_system = True

    # -- batching ---------------------------------------------------------------------------

    async def _batch_forever(self, worker: ModelThread) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._run_batch(worker, batch)

    async def _next_batch(self) -> list[_Row]:
        """Wait for one row, then gather more for up to `batch_wait_ms`, up to the limit."""
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self._batch_wait
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return [row for row in batch if not row.pending.cancelled]

    async def _run_batch(self, worker: ModelThread, batch: list[_Row]) -> None:
        specs = [row.spec for row in batch]
        try:
            results = await worker.submit(lambda: self._generate_blocking(specs))
        except asyncio.CancelledError:
            for row in batch:
                row.pending.deliver(
                    row.index, ServiceUnavailableError(f"The model '{self.name}' is shutting down.")
                )
            raise
        except Exception as exc:
            log.exception("model %s: generation failed for a batch of %d", self.name, len(batch))
            error = GatewayError(
                f"BLIP-2 generation failed ({type(exc).__name__}); the gateway log has the details."
            )
            for row in batch:
                row.pending.deliver(row.index, error)
            return
        self._count(len(batch))
        for row, result in zip(batch, results, strict=True):
            row.pending.deliver(row.index, result)

    def _generate_blocking(self, specs: list[RowSpec]) -> list[RowResult]:
        """In the model thread: one batch, with the functions the load brought in."""
        generate, loaded = self._generate, self._loaded
        if generate is None or loaded is None:  # stopped while the batch waited for the thread
            raise RuntimeError("the model is not loaded")
        return generate(loaded, specs, self._stopping)

    def _count(self, size: int) -> None:
        stats = self._stats
        stats.batches += 1
        stats.sequences += size
        stats.largest_batch = max(stats.largest_batch, size)

    def _fail_queued(self, error: GatewayError) -> None:
        while not self._queue.empty():
            row = self._queue.get_nowait()
            row.pending.deliver(row.index, error)


def _prepare(loaded: LoadedBlip2, prompt: Blip2Prompt) -> tuple[list[int], torch.Tensor]:
    """Blocking: decode and preprocess the image, tokenize the prompt."""
    image = decode_image(prompt.image_url, prompt.image_param)
    try:
        pixels = loaded.pixel_values(image)
    except Exception:
        raise InvalidRequestError(
            "The image could not be processed for BLIP-2.", param=prompt.image_param
        ) from None
    return loaded.prompt_ids(prompt.text), pixels


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."
