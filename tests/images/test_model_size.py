"""A model's image input size from its image processor config: fixed sizes are read, tiling
and variable-resolution processors give None (shrinking their input would lose detail)."""

from __future__ import annotations

import json

import pytest

from vlm_gateway.images.model_size import model_input_size


def model_dir(tmp_path, config: dict, name: str = "preprocessor_config.json"):
    tmp_path.joinpath(name).write_text(json.dumps(config))
    return str(tmp_path)


@pytest.mark.parametrize(
    "config,expected",
    [
        ({"size": {"height": 224, "width": 224}}, (224, 224)),  # BLIP, PaliGemma
        ({"size": {"height": 384, "width": 512}}, (512, 384)),
        ({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}, (336, 336)),
        ({"size": 448}, (448, 448)),
        ({"size": {"height": 224, "width": 224}, "do_resize": False}, None),
        ({"size": {"shortest_edge": 336}, "image_grid_pinpoints": [[336, 672]]}, None),
        ({"size": {"shortest_edge": 3136, "longest_edge": 12845056}}, None),  # Qwen2-VL
        ({"min_pixels": 3136, "max_pixels": 12845056}, None),
        ({"size": {"height": 448, "width": 448}, "crop_to_patches": True}, None),  # InternVL
        ({"size": {"longest_edge": 1456}, "do_image_splitting": True}, None),  # Idefics3
        ({"size": {"height": "224", "width": 224}}, None),
        ({}, None),
    ],
)
def test_fixed_sizes_are_read_and_tiling_processors_give_none(tmp_path, config, expected):
    assert model_input_size(model_dir(tmp_path, config)) == expected


def test_transformers_5_processor_config(tmp_path):
    nested = {"image_processor": {"size": {"height": 30, "width": 30}}, "num_query_tokens": 4}
    assert model_input_size(model_dir(tmp_path, nested, "processor_config.json")) == (30, 30)


def test_the_tiny_blip2_says_its_own_size(tiny_models):
    assert model_input_size(str(tiny_models["blip2"])) == (30, 30)


def test_hub_ids_are_looked_up_in_the_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert model_input_size("org/model") is None  # not cached: no download, no error
    repo = tmp_path / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    model_dir(snapshot, {"size": {"height": 364, "width": 364}})
    assert model_input_size("org/model") == (364, 364)
    assert model_input_size("/no/such/dir") is None
