"""The tiny models of the in-process transformers backend (vlm_gateway/cli/tiny_hf_models.py):
seeded builds, loading with the Auto classes (Qwen2-VL's processor without torchvision), the
seed's recipe (processor chat template + `generate`), and greedy answers of a left-padded batch
identical to the same requests run one at a time."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from PIL import Image

from tests.support.processes import REPO
from vlm_gateway.cli.tiny_hf_models import (
    END_HEADER,
    IDEFICS3_IMAGE_TOKENS,
    JOYCAPTION_SYSTEM_PROMPT,
    START_HEADER,
    build_tiny_idefics3,
    build_tiny_joycaption,
    load_processor,
)

MODELS = ["llava-joycaption", "qwen2vl", "idefics3"]
# Three different sizes, colours and questions: different prompt lengths, so the batch pads.
IMAGES = [
    Image.new("RGB", (80, 60), (200, 30, 40)),
    Image.new("RGB", (33, 90), (10, 200, 40)),
    Image.radial_gradient("L").convert("RGB"),
]
QUESTIONS = ["What is it?", "Describe the picture in a few words, please.", "Red?"]


def _files(directory) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _conversation(name: str, image: Image.Image, question: str) -> list[dict]:
    user = {
        "role": "user",
        "content": [{"type": "image", "image": image}, {"type": "text", "text": question}],
    }
    if name == "llava-joycaption":  # the seed's system + user conversation
        return [{"role": "system", "content": JOYCAPTION_SYSTEM_PROMPT}, user]
    return [user]


def _load(tiny_models, name: str, attn_implementation: str = "sdpa"):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        tiny_models[name], attn_implementation=attn_implementation
    ).eval()
    processor = load_processor(tiny_models[name])
    processor.tokenizer.padding_side = "left"
    return model, processor


def _inputs(processor, conversations, **kwargs):
    return processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        **kwargs,
    )


def _greedy(model, inputs) -> list[list[int]]:
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return out[:, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("build", [build_tiny_joycaption, build_tiny_idefics3])
def test_a_seed_builds_the_same_bytes(build, tmp_path):
    assert _files(build(tmp_path / "a")) == _files(build(tmp_path / "b"))


@pytest.mark.parametrize("name", MODELS)
def test_each_loads_with_the_auto_classes(tiny_models, name):
    from transformers import AutoModelForImageTextToText

    model, info = AutoModelForImageTextToText.from_pretrained(
        tiny_models[name], output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    text = model.config.text_config
    assert text.hidden_size // text.num_attention_heads == 32  # vLLM's CPU attention
    assert model.num_parameters() < 1_000_000


@pytest.mark.parametrize("name", ["llava-joycaption", "idefics3"])
def test_auto_processor_loads_those_without_a_video_processor(tiny_models, name):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models[name])
    assert type(load_processor(tiny_models[name])) is type(processor)


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed"
)
def test_qwen2vl_processor_loads_without_torchvision(tiny_models):
    from transformers import AutoProcessor, Qwen2VLProcessor

    with pytest.raises(ImportError, match="[Tt]orchvision"):
        AutoProcessor.from_pretrained(tiny_models["qwen2vl"])
    processor = load_processor(tiny_models["qwen2vl"])
    assert isinstance(processor, Qwen2VLProcessor)
    assert not hasattr(processor, "video_processor")
    assert processor.chat_template and type(processor.image_processor).__name__.endswith("Pil")


def test_load_processor_raises_other_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    with pytest.raises((OSError, ValueError, KeyError)):
        load_processor(tmp_path)


def test_joycaption_renders_the_seeds_conversation(tiny_models):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["llava-joycaption"])
    convo = [
        {"role": "system", "content": JOYCAPTION_SYSTEM_PROMPT},
        {"role": "user", "content": "Write a long descriptive caption for this image."},
    ]
    prompt = processor.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        f"{START_HEADER}system{END_HEADER}\n\n{JOYCAPTION_SYSTEM_PROMPT}<|eot_id|>"
        f"{START_HEADER}user{END_HEADER}\n\n<image>Write a long descriptive caption for this "
        f"image.<|eot_id|>{START_HEADER}assistant{END_HEADER}\n\n"
    )
    # The seed's recipe: the rendered string and the image through the processor, one <s>.
    inputs = processor(text=[prompt], images=[IMAGES[0]], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(processor.tokenizer.bos_token_id) == 1
    tokenized = _inputs(processor, convo)["input_ids"][0].tolist()
    assert tokenized.count(processor.tokenizer.bos_token_id) == 1
    for marker in (START_HEADER, END_HEADER, "<|eot_id|>"):
        assert processor.tokenizer.convert_tokens_to_ids(marker) in ids


def test_idefics3_expands_one_tile_per_image(tiny_models):
    _, processor = _load(tiny_models, "idefics3")
    inputs = _inputs(processor, _conversation("idefics3", IMAGES[1], "Hi"))
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert inputs["input_ids"][0].tolist().count(image_id) == IDEFICS3_IMAGE_TOKENS
    assert tuple(inputs["pixel_values"].shape[:2]) == (1, 1)  # no splitting into tiles


@pytest.mark.parametrize("name", MODELS)
def test_the_seeds_recipe_generates(tiny_models, name):
    model, processor = _load(tiny_models, name)
    inputs = _inputs(processor, _conversation(name, IMAGES[0], QUESTIONS[0]))
    (tokens,) = _greedy(model, inputs)
    assert len(tokens) == 8
    assert [tokens] == _greedy(model, inputs)  # greedy is deterministic


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("name", MODELS)
def test_a_left_padded_batch_gives_the_same_greedy_tokens(tiny_models, name, attn_implementation):
    """The property the batching backend relies on: a batch row equals that request alone."""
    model, processor = _load(tiny_models, name, attn_implementation)
    conversations = [_conversation(name, i, q) for i, q in zip(IMAGES, QUESTIONS, strict=True)]
    alone = [_greedy(model, _inputs(processor, c))[0] for c in conversations]
    batch = _inputs(processor, conversations, processor_kwargs={"padding": True})
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert len(set(lengths)) > 1 and batch["attention_mask"][:, 0].tolist().count(0) > 0
    assert _greedy(model, batch) == alone


@pytest.mark.parametrize(
    ("flag", "architecture"),
    [
        ("--idefics3", "Idefics3ForConditionalGeneration"),
        ("--joycaption", "LlavaForConditionalGeneration"),
    ],
)
def test_the_tiny_model_command_writes_them(tmp_path, flag, architecture):
    argv = [sys.executable, "-m", "vlm_gateway", "tiny-model", str(tmp_path / "m"), flag]
    result = subprocess.run(argv, cwd=REPO, text=True, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "AutoProcessor" in result.stdout
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == [architecture]
    assert _files(tmp_path / "m") == _files(_BUILDS[flag](tmp_path / "again"))


_BUILDS = {"--idefics3": build_tiny_idefics3, "--joycaption": build_tiny_joycaption}
