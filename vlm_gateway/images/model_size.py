"""A model's image input size, read from its Hugging Face image processor config.

For `images.resize: auto`. Only fixed-size processors count: `size: {height, width}` (BLIP,
SigLIP, PaliGemma, Gemma 3) or `size: {shortest_edge}` (CLIP-style resize and crop, e.g.
LLaVA-1.5). Processors that tile or keep a variable resolution (Qwen2-VL's min/max pixels,
LLaVA-NeXT's grid pinpoints, Idefics' image splitting, mllama's tiles, InternVL's patches)
would lose detail if the gateway shrank their input: for them the answer is None, and the
image goes on at its own size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Keys of processors that look at more than one fixed-size view of the image.
_TILING_KEYS = (
    "image_grid_pinpoints",
    "max_image_tiles",
    "max_patches",
    "crop_to_patches",
    "do_image_splitting",
    "do_pan_and_scan",
    "min_pixels",
    "max_pixels",
    "num_crops",
    "max_dynamic_patch",
    "slice_mode",
)


def model_input_size(model: str) -> tuple[int, int] | None:
    """(width, height) the model's image processor resizes to; None when unknown or variable.
    `model` is a local directory, or a hub id looked up in the local Hugging Face cache."""
    directory = Path(model) if os.path.isdir(model) else _hub_cache_snapshot(model)
    if directory is None:
        return None
    config = _image_processor_config(directory)
    return _fixed_size(config) if config is not None else None


def _image_processor_config(directory: Path) -> dict[str, Any] | None:
    """preprocessor_config.json, or the `image_processor` part of processor_config.json (as
    transformers 5 saves it)."""
    for name, key in (
        ("preprocessor_config.json", None),
        ("processor_config.json", "image_processor"),
    ):
        try:
            loaded = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
        config = loaded.get(key) if key and isinstance(loaded, dict) else loaded
        if isinstance(config, dict):
            return config
    return None


def _fixed_size(config: dict[str, Any]) -> tuple[int, int] | None:
    if config.get("do_resize") is False or any(config.get(key) for key in _TILING_KEYS):
        return None
    size = config.get("size")
    if isinstance(size, int):  # old configs: one side of a square
        return _sides(size, size)
    if not isinstance(size, dict) or "longest_edge" in size:
        return None
    if "height" in size and "width" in size:
        return _sides(size["width"], size["height"])
    if "shortest_edge" in size:
        return _sides(size["shortest_edge"], size["shortest_edge"])
    return None


def _sides(width: object, height: object) -> tuple[int, int] | None:
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    return None


def local_model_dir(model: str, revision: str | None = None) -> Path | None:
    """Where `model`'s files are on this machine without a download: the directory itself, or
    the hub id's snapshot in the local Hugging Face cache; None when neither is here."""
    if os.path.isdir(model):
        return Path(model)
    return _hub_cache_snapshot(model, revision or "main")


def _hub_cache_snapshot(model: str, revision: str = "main") -> Path | None:
    """The cached snapshot of hub id `model` ("org/name") at `revision` (a branch or tag the
    cache has a ref for, or a commit), if present."""
    if model.count("/") != 1 or model.startswith((".", "/")):
        return None
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"),
        "hub",
    )
    repo = Path(hub) / ("models--" + model.replace("/", "--"))
    try:
        commit = (repo / "refs" / revision).read_text().strip()
    except OSError:
        commit = revision  # a commit hash names its snapshot directly
    snapshot = repo / "snapshots" / commit
    return snapshot if commit and snapshot.is_dir() else None


# Model types vLLM takes video for although their config names no video token.
_VIDEO_MODEL_TYPES = ("minicpmv", "minicpmo", "llava_onevision", "llava_next_video", "qwen2_5_omni")
_VIDEO_KEYS = ("video_token_id", "video_token_index", "video_config")
_AUDIO_KEYS = ("audio_config", "audio_token_id", "audio_token_index", "audio_model_id")


def model_takes_images(model: str) -> bool | None:
    """Whether the model's config.json describes a vision part (`vision_config`, or an image
    processor beside it); None when there is no local config to read."""
    modalities = model_modalities(model)
    return None if modalities is None else "image" in modalities


def model_modalities(model: str) -> tuple[str, ...] | None:
    """What the model takes, read from its config.json: text, plus image for a vision part
    (`vision_config`, or an image processor beside it), video and audio for their tokens or
    towers (an omni model's thinker included); None when there is no local config to read."""
    directory = Path(model) if os.path.isdir(model) else _hub_cache_snapshot(model)
    config = _config_in(directory) if directory is not None else None
    if directory is None or config is None:
        return None
    parts = [config, *(v for v in config.values() if isinstance(v, dict))]  # thinker_config

    def has(keys: tuple[str, ...]) -> bool:
        return any(key in part for part in parts for key in keys)

    vision_keys = ("vision_config", "vision_tower", "mm_vision_tower", "image_token_index")
    found = ["text"]
    if has(vision_keys) or _image_processor_config(directory) is not None:
        found.append("image")
    if has(_VIDEO_KEYS) or config.get("model_type") in _VIDEO_MODEL_TYPES:
        found.append("video")
    if has(_AUDIO_KEYS):
        found.append("audio")
    return tuple(found)


def model_config(model: str) -> dict[str, Any] | None:
    """The model's config.json (a local directory, or a hub id in the local Hugging Face
    cache); None when there is none to read."""
    directory = Path(model) if os.path.isdir(model) else _hub_cache_snapshot(model)
    return _config_in(directory) if directory is not None else None


def _config_in(directory: Path) -> dict[str, Any] | None:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
