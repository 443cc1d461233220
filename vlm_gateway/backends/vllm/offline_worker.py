"""vLLM's offline engine as a captioning worker: `python offline_worker.py` under vLLM's own
interpreter (its venv need not have vlm-gateway installed, so this file imports only the
standard library and vLLM).

Why a worker and not `vllm serve`: when a caption run owns the model, the online path's costs
(base64, JSON, HTTP, the API server's per-request processing, engine steps spent on requests
that trickle in one by one) buy nothing. Here every image that is ready joins one `LLM.chat`
call, so the engine runs full batches, as the seed's batch script does, while the gateway keeps
preparing the next images in its pool.

Protocol, one JSON object a line:
- stdin, first line: {"model", "engine_args": [CLI flags as for `vllm serve`], "chat_template",
  "prompt", "max_tokens", "temperature", "max_batch", "spool"}; then one {"id", "path"} per image (a
  file under the spool directory, named in `--allowed-local-media-path` by the caller), or
  {"id", "path", "modality": "video" | "audio"} per video or audio file.
- stdout: {"ready": true} once the engine is up (or {"fatal": message}); then {"id", "caption",
  "tokens"} or {"id", "error"} per image, in any order.
vLLM's own logs go to stderr: stdout is kept for the protocol alone.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

_END = None  # put on the queue when stdin closes


@dataclass
class Item:
    id: int
    path: str
    image: Any  # a PIL image; None for video and audio, or when it could not be loaded
    error: str | None = None
    modality: str = "image"  # or "video", "audio": read by vLLM itself, from a file: URL


def _protocol_stream() -> IO[str]:
    """The real stdout for replies; fd 1 then points at stderr, so that a library that prints
    (vLLM logs to stdout by default) cannot break a reply line."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return replies


def _read_images(source: IO[str], into: queue.Queue[Item | None]) -> None:
    """Each image decoded as it arrives, by vLLM's own loader (what `file://` URLs get), in this
    thread: decoding overlaps the engine's work on the batch before (Pillow drops the GIL)."""
    from vllm.multimodal.media.image import ImageMediaIO

    loader = ImageMediaIO(image_mode="RGB")
    for line in source:
        if not line.strip():
            continue
        item = json.loads(line)
        modality = item.get("modality", "image")
        if modality != "image":
            # `LLM.chat` reads it from its file: URL with vLLM's own loaders (frames sampled as
            # the engine's media flags say), what `vllm serve` does with the same part.
            into.put(Item(item["id"], item["path"], None, modality=modality))
            continue
        try:
            into.put(Item(item["id"], item["path"], loader.load_file(Path(item["path"]))))
        except Exception as exc:
            into.put(Item(item["id"], item["path"], None, f"{type(exc).__name__}: {exc}"[:500]))
    into.put(_END)


def _next_batch(pending: queue.Queue[Item | None], largest: int) -> tuple[list[Item], bool]:
    """At least one image (waiting for it), then whatever else is already there."""
    first = pending.get()
    if first is None:
        return [], True
    batch = [first]
    while len(batch) < largest:
        try:
            item = pending.get_nowait()
        except queue.Empty:
            break
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False


def _engine(config: dict[str, Any]) -> Any:
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    flags = [*config["engine_args"], *_in_one_process_on_cpu(config["engine_args"])]
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    args, ignored = parser.parse_known_args(["--model", config["model"], *flags])
    if ignored:
        print(f"offline engine: not engine flags, ignored: {ignored}", file=sys.stderr)
    return LLM.from_engine_args(EngineArgs.from_cli_args(args))


def _in_one_process_on_cpu(flags: list[str]) -> list[str]:
    """On a CPU build, the engine and the model run in this process (flags to add). vLLM's
    separate engine and model processes busy-wait for each other's messages (a `sched_yield`
    loop for 1 s after each one), which takes the cores the caller's image pool needs: on 2
    cores, photos went 2.4-4x faster this way (docs/benchmarks.md). GPU builds keep vLLM's
    defaults (not measured here)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return []
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    chosen = any(flag.startswith("--distributed-executor-backend") for flag in flags)
    return [] if chosen else ["--distributed-executor-backend", "uni"]


def _conversation(path: str, prompt: str, modality: str = "image") -> list[dict[str, Any]]:
    """The caption request's one message: the media part first, as the gateway path sends it
    (`image_url`, `video_url` or `audio_url`), then the prompt."""
    part = f"{modality}_url"
    content: list[dict[str, Any]] = [{"type": part, part: {"url": "file://" + path}}]
    if prompt:
        content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


def _prompt_token_ids(llm: Any, config: dict[str, Any], path: str) -> list[int] | None:
    """The caption conversation's prompt, rendered and tokenized once, the way `LLM.chat`
    renders each one (vLLM 0.32's renderer): every caption shares it, only the image differs.
    None where that renderer is not there or works differently (the caller then uses
    `LLM.chat` for every image)."""
    try:
        from vllm.renderers import ChatParams, merge_kwargs

        renderer = llm.renderer
        if llm.model_config.enable_prompt_embeds or "mistral" in type(renderer.tokenizer).__name__:
            return None  # these render to token ids, with their own rules
        template = config["chat_template"] or llm.chat_template
        kwargs = {"add_generation_prompt": True, "continue_final_message": False}
        params = ChatParams(
            chat_template=template,
            chat_template_content_format="auto",
            chat_template_kwargs=merge_kwargs(None, kwargs | {"tools": None, "tokenize": False}),
        )
        _, rendered = renderer.render_messages(_conversation(path, config["prompt"]), params)
        tokens = renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False)
        return list(renderer.tokenize_prompt(rendered, tokens)["prompt_token_ids"])
    except Exception as exc:
        print(
            f"offline engine: rendering once failed ({exc!r}); LLM.chat per image", file=sys.stderr
        )
        return None


class Captioner:
    """Batches of images -> replies. The first image is captioned twice, by `LLM.chat` and by
    `LLM.generate` with the prompt rendered once: the fast way is kept only if the engine got
    the same tokens and wrote the same caption both ways."""

    def __init__(self, llm: Any, config: dict[str, Any]) -> None:
        self.llm, self.config = llm, config
        self.params = llm.get_default_sampling_params()
        self.params.max_tokens = config["max_tokens"]
        self.params.temperature = config["temperature"]
        self.prompt_ids: list[int] | None = None
        self.checked = False

    def caption(self, batch: list[Item]) -> list[tuple[int, dict[str, Any]]]:
        replies = [(item.id, {"error": item.error}) for item in batch if item.error is not None]
        # Videos and audio always go through `LLM.chat`: the prompt rendered once is an image
        # prompt (its placeholder tokens are the image's), so the fast way is for images only.
        media = [item for item in batch if item.error is None and item.modality != "image"]
        batch = [item for item in batch if item.error is None and item.modality == "image"]
        if batch and not self.checked:
            self.checked = True
            replies += self._check_fast_way(batch[0])
            batch = batch[1:]
        replies += self._run(media, fast=False) if media else []
        return replies + (self._run(batch) if batch else [])

    def _check_fast_way(self, item: Item) -> list[tuple[int, dict[str, Any]]]:
        reference = self._generate([item], fast=False)
        self.prompt_ids = _prompt_token_ids(self.llm, self.config, item.path)
        if self.prompt_ids is not None and _signature(self._generate([item])) != _signature(
            reference
        ):
            print("offline engine: the fast way differs; LLM.chat each", file=sys.stderr)
            self.prompt_ids = None
        return _replies([item], reference)

    def _generate(self, batch: list[Item], fast: bool = True) -> list[Any]:
        if fast and self.prompt_ids is not None:
            prompts = [
                {"prompt_token_ids": self.prompt_ids, "multi_modal_data": {"image": item.image}}
                for item in batch
            ]
            return list(self.llm.generate(prompts, self.params, use_tqdm=False))
        prompt = self.config["prompt"]
        conversations = [_conversation(item.path, prompt, item.modality) for item in batch]
        template = self.config["chat_template"]
        return list(
            self.llm.chat(conversations, self.params, use_tqdm=False, chat_template=template)
        )

    def _run(self, batch: list[Item], fast: bool = True) -> list[tuple[int, dict[str, Any]]]:
        """(id, reply) per item; one vLLM refuses alone is an error, not the batch's."""
        try:
            return _replies(batch, self._generate(batch, fast))
        except Exception as exc:
            if len(batch) == 1:
                return [(batch[0].id, {"error": f"{type(exc).__name__}: {exc}"[:1000]})]
            return [pair for item in batch for pair in self._run([item], fast)]


def _signature(outputs: list[Any]) -> list[tuple[list[int], str]]:
    """What the engine was given and what it wrote, to compare two ways of asking."""
    return [(list(out.prompt_token_ids), out.outputs[0].text) for out in outputs]


def _replies(batch: list[Item], outputs: list[Any]) -> list[tuple[int, dict[str, Any]]]:
    return [
        (item.id, {"caption": out.outputs[0].text, "tokens": len(out.outputs[0].token_ids)})
        for item, out in zip(batch, outputs, strict=True)
    ]


def _warm_up(captioner: Captioner, spool: str, count: int) -> None:
    """One full batch of a blank image before the first real one: the fast way is checked
    (its first image), and the engine's first large batch, much slower than the ones after it
    on CPU, is out of the way before `ready`, as it is for a `vllm serve` that has served."""
    from PIL import Image

    from vllm.multimodal.media.image import ImageMediaIO

    path = os.path.join(spool, "warm-up.png")
    Image.new("RGB", (224, 224), (128, 128, 128)).save(path)
    image = ImageMediaIO(image_mode="RGB").load_file(Path(path))
    captioner.caption([Item(-index, path, image) for index in range(1, count + 1)])
    os.unlink(path)


def main() -> None:
    replies = _protocol_stream()
    config = json.loads(sys.stdin.readline())
    try:
        captioner = Captioner(_engine(config), config)
        _warm_up(captioner, config["spool"], config["max_batch"])
    except Exception as exc:  # the caller shows this and the log's tail
        replies.write(json.dumps({"fatal": f"{type(exc).__name__}: {exc}"}) + "\n")
        return
    pending: queue.Queue[Item | None] = queue.Queue()
    threading.Thread(target=_read_images, args=(sys.stdin, pending), daemon=True).start()
    replies.write(json.dumps({"ready": True}) + "\n")
    finished = False
    while not finished:
        batch, finished = _next_batch(pending, config["max_batch"])
        for image_id, reply in captioner.caption(batch) if batch else []:
            replies.write(json.dumps({"id": image_id, **reply}) + "\n")


if __name__ == "__main__":
    main()
