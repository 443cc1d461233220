"""Can the BLIP-2 weights be had? Checked by `vlm-gateway serve` with no config before it
starts, so a user without the weights gets one short message instead of a gateway whose only
model fails to load. No torch here; huggingface_hub (a transformers dependency) lazily."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_BLIP2 = "Salesforce/blip2-opt-2.7b"


def missing_weights_reason(model_ref: str, hub_timeout_s: float = 5.0) -> str | None:
    """None when `model_ref` is a model directory, is in the local Hugging Face cache, or the
    hub answers for it; else what is missing, in one line."""
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"the blip2 extra is not installed ({', '.join(missing)} missing): "
            "pip install 'vlm-gateway[blip2]'"
        )
    path = Path(model_ref).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        return f"{path} has no config.json, so it is not a transformers model directory"
    if _looks_like_path(model_ref):
        return f"{model_ref} is not a directory"
    return _hub_reason(model_ref, hub_timeout_s)


def _hub_reason(repo_id: str, timeout_s: float) -> str | None:
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return None
    not_cached = f"{repo_id} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        return f"{not_cached} and HF_HUB_OFFLINE is set"
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot download it now
        return f"{not_cached} and the hub cannot be reached ({type(exc).__name__})"
    return None


def how_to_get_weights(model_ref: str) -> list[str]:
    if _looks_like_path(model_ref):
        fetch = ["Point --model at a directory holding a transformers BLIP-2:"]
    else:
        fetch = [
            f"Download it where there is network (huggingface-cli download {model_ref}),",
            "copy the directory here and point --model at it:",
        ]
    return fetch + [
        "  vlm-gateway serve --model /path/to/blip2-opt-2.7b",
        "For a smoke test with no download (random weights, the words are noise):",
        "  vlm-gateway tiny-model ./tiny-blip2 && vlm-gateway serve --model ./tiny-blip2",
    ]


def _looks_like_path(model_ref: str) -> bool:
    return model_ref.startswith(("/", ".", "~")) or Path(model_ref).expanduser().exists()
