"""Tiny random models for the in-process transformers backend (built offline), a processor loader.

The counterparts of `tiny_models` for `backend: transformers` (same tokenizer, seeding and
saving): a JoyCaption-style LLaVA (the tiny LLaVA with a Llama-3-style chat template and
JoyCaption's system prompt) and an Idefics3 (the SmolVLM family), each about 1 MB, loading with
`AutoModelForImageTextToText` and `AutoProcessor`. The text they write is noise; tests assert
shapes, token counts and batching, never meaning.

`load_processor` (re-exported from the transformers kind, which loads with it) loads a model's
processor where `AutoProcessor` cannot for want of torchvision.

torch and transformers are imported inside the functions: the HTTP app must never pay for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vlm_gateway.backends.transformers.processor import load_processor
from vlm_gateway.cli.tiny_models import (
    _SMALL,
    HIDDEN,
    MAX_POSITIONS,
    _fresh_dir,
    _image_token_id,
    _save,
    _seeded,
    build_tiny_llava,
    tiny_llama,
)
from vlm_gateway.cli.tiny_tokenizer import build_tokenizer

if TYPE_CHECKING:
    from transformers import Idefics3Config, PreTrainedTokenizerFast

# JoyCaption (fancyfeast/llama-joycaption-alpha-two-hf-llava) is a LLaVA on Llama 3.1: its
# template writes Llama-3 headers, and the seed sends this system prompt with every request.
JOYCAPTION_SYSTEM_PROMPT = "You are a helpful image captioner."
START_HEADER, END_HEADER, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
# Image parts become `<image>` where they stand. A plain string content in the first user turn
# gets `<image>` in front, as JoyCaption's template does: the seed's prompt names no image. No
# bos in the template: the tokenizer adds `<s>`, so the seed's recipe (render, then
# `processor(text, images)`) and `apply_chat_template(tokenize=True)` both give exactly one.
JOYCAPTION_CHAT_TEMPLATE = (
    "{%- set ns = namespace(first_user=true) -%}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{%- if message['role'] == 'user' and ns.first_user -%}{{- '<image>' -}}{%- endif -%}"
    "{{- message['content'] | trim -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] in ('image', 'image_url') -%}{{- '<image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{%- set ns.first_user = false -%}{%- endif -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}"
)

# Idefics3 / SmolVLM: one 64x64 image (no splitting into tiles), 16-pixel patches, pixel shuffle
# by 2: (64 / 16) ** 2 / 2 ** 2 = 4 image tokens, between <fake_token_around_image><global-img>
# and <fake_token_around_image>.
IDEFICS3_IMAGE_SIZE = 64
IDEFICS3_PATCH_SIZE = 16
IDEFICS3_SCALE_FACTOR = 2
_IDEFICS3_PATCHES = (IDEFICS3_IMAGE_SIZE // IDEFICS3_PATCH_SIZE) ** 2
IDEFICS3_IMAGE_TOKENS = _IDEFICS3_PATCHES // IDEFICS3_SCALE_FACTOR**2
FAKE_IMAGE, GLOBAL_IMAGE = "<fake_token_around_image>", "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
# Idefics3's and SmolVLM's template ("User:<image>question<end_of_utterance>\nAssistant:"), which
# also takes a plain string content and `image_url` parts; the tokenizer adds `<s>`.
IDEFICS3_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- message['role'] | capitalize -}}"
    "{%- if message['content'] is string -%}{{- ': ' + message['content'] -}}"
    "{%- else -%}"
    "{%- if message['content'][0]['type'] in ('image', 'image_url') -%}{{- ':' -}}"
    "{%- else -%}{{- ': ' -}}{%- endif -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] in ('image', 'image_url') -%}{{- '<image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<end_of_utterance>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)


def build_tiny_joycaption(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny LLaVA with JoyCaption's Llama-3-style chat template to `out_dir`.

    The same architecture and weights recipe as `tiny_models.build_tiny_llava`; the tokenizer
    also knows the template's header and end-of-turn tokens. Anything already at `out_dir` is
    removed first; the marker file is written last.
    """
    return build_tiny_llava(
        out_dir,
        seed,
        chat_template=JOYCAPTION_CHAT_TEMPLATE,
        extra_special_tokens=[START_HEADER, END_HEADER, EOT],
    )


def _idefics3_config(tokenizer: PreTrainedTokenizerFast) -> Idefics3Config:
    from transformers import Idefics3Config, Idefics3VisionConfig

    vision = Idefics3VisionConfig(
        **_SMALL,
        intermediate_size=2 * HIDDEN,
        image_size=IDEFICS3_IMAGE_SIZE,
        patch_size=IDEFICS3_PATCH_SIZE,
    )
    text = tiny_llama(tokenizer)
    return Idefics3Config(
        vision_config=vision,
        text_config=text,
        image_token_id=_image_token_id(tokenizer),
        scale_factor=IDEFICS3_SCALE_FACTOR,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def build_tiny_idefics3(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Idefics3ForConditionalGeneration (SigLIP-style tower + Llama).

    Image splitting is off: every image is resized to one 64x64 tile, 4 image tokens. Anything
    already at `out_dir` is removed first; the marker file is written last.
    """
    from transformers import (
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    out = _fresh_dir(out_dir)
    tokenizer = build_tokenizer(
        named_image_token=False,
        max_length=MAX_POSITIONS,
        extra_special_tokens=[FAKE_IMAGE, GLOBAL_IMAGE, END_OF_UTTERANCE],
    )
    with _seeded(seed):
        model = Idefics3ForConditionalGeneration(_idefics3_config(tokenizer))  # type: ignore[no-untyped-call]
        model.eval()  # type: ignore[no-untyped-call]
    edge = {"longest_edge": IDEFICS3_IMAGE_SIZE}
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size=edge, max_image_size=edge)
    processor = Idefics3Processor(
        images,
        tokenizer,
        image_seq_len=IDEFICS3_IMAGE_TOKENS,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    return _save(out, model, processor, seed, rename=None)


__all__ = ["build_tiny_idefics3", "build_tiny_joycaption", "load_processor"]
