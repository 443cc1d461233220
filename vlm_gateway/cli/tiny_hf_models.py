"""Tiny random models for the in-process transformers backend (built offline), a processor loader.

The counterparts of `tiny_models` for `backend: transformers` (same tokenizer, seeding and
saving): a JoyCaption-style LLaVA (the tiny LLaVA with a Llama-3-style chat template and
JoyCaption's system prompt) and an Idefics3 (the SmolVLM family), each about 1 MB, loading with
`AutoModelForImageTextToText` and `AutoProcessor`. The text they write is noise; tests assert
shapes, token counts and batching, never meaning.

`load_processor` loads a model's processor where `AutoProcessor` cannot: transformers 5's video
processors all need torchvision, which the gateway's environment does not have, so
`AutoProcessor` on a Qwen2-VL (or Qwen2.5-VL, Qwen3-VL, SmolVLM) directory raises ImportError.

torch and transformers are imported inside the functions: the HTTP app must never pay for them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    from transformers import Idefics3Config, PreTrainedTokenizerFast, ProcessorMixin

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


def load_processor(model_dir: str | Path, **kwargs: Any) -> ProcessorMixin:
    """`AutoProcessor.from_pretrained(model_dir, **kwargs)`, or, where that fails for want of
    torchvision, the same processor without its video processor.

    transformers 5's video processors (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM, ...) all need
    torchvision. Without it, the processor class named in the directory is loaded through a
    subclass that leaves the video processor out: images and text work as with the whole
    processor (the image processor falls back to its PIL version). Such a processor has no
    `video_processor` attribute: a caller must refuse video itself (what the processor does with
    one is unchecked). Any other error is raised as it is.
    """
    from transformers import AutoProcessor

    try:
        # AutoProcessor is unannotated in transformers.
        return AutoProcessor.from_pretrained(model_dir, **kwargs)  # type: ignore[no-untyped-call,no-any-return]
    except ImportError as error:
        if "torchvision" not in str(error).lower():
            raise
        images_only = _images_only_class(_processor_class_name(Path(model_dir)))
        if images_only is None:
            raise
    return images_only.from_pretrained(model_dir, **kwargs)


def _processor_class_name(model_dir: Path) -> str | None:
    for file in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        try:
            config = json.loads((model_dir / file).read_text())
        except (OSError, ValueError):
            continue
        name = config.get("processor_class") if isinstance(config, dict) else None
        if isinstance(name, str):
            return name
    return None


def _images_only_class(name: str | None) -> type[ProcessorMixin] | None:
    """A subclass of transformers' processor class `name` without its video processor, or None
    where transformers has no such class or it takes no video processor."""
    import transformers

    base = getattr(transformers, name, None) if name else None
    if not isinstance(base, type) or not issubclass(base, transformers.ProcessorMixin):
        return None
    every: list[str] = base.get_attributes()  # type: ignore[no-untyped-call]
    attributes = [attribute for attribute in every if attribute != "video_processor"]
    if len(attributes) == len(every):
        return None

    def get_attributes(cls: type) -> list[str]:
        # ProcessorMixin loads, checks and saves exactly these sub-processors.
        return list(attributes)

    return type(base.__name__, (base,), {"get_attributes": classmethod(get_attributes)})
