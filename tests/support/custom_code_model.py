"""A tiny custom-code model directory, written by tests: MiniCPM-V's `chat` interface, no network.

`write_custom_code_model(dir)` writes what a hub repository with `trust_remote_code` holds:
`config.json` whose `auto_map` points AutoConfig and AutoModel at the directory's own
`configuration_tiny.py` and `modeling_tiny.py`, one weight, and the tiny models' tokenizer.
`AutoModel.from_pretrained(dir, trust_remote_code=True)` loads it fully offline
(HF_HUB_OFFLINE=1); transformers copies the code into HF_MODULES_CACHE.

The model's `chat(image=None, msgs=..., tokenizer=..., sampling=..., system_prompt=...,
stream=..., **kwargs)` answers like MiniCPM-V 2.6's (a str, or a generator of str pieces with
`stream=True`, which it takes only with `sampling`), checks `msgs` as MiniCPM-V 2.6 does, and
answers deterministically: `answer_for` gives the text for the images' sizes, the last user
question and the system prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

MODEL_TYPE = "tiny-chat"

CONFIGURATION = """
from transformers import PretrainedConfig


class TinyChatConfig(PretrainedConfig):
    model_type = "tiny-chat"

    def __init__(self, hidden_size=4, **kwargs):
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
"""

MODELING = '''
import torch
from PIL import Image
from transformers import PreTrainedModel

from .configuration_tiny import TinyChatConfig


def answer_for(images, question, system=""):
    sizes = ", ".join(f"{image.size[0]}x{image.size[1]}" for image in images)
    said = f"(system: {system}) " if system else ""
    return f"{said}{len(images)} image(s) [{sizes}] asked: {question}"


class TinyChatModel(PreTrainedModel):
    config_class = TinyChatConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, x):
        return self.proj(x)

    def chat(self, image=None, msgs=None, tokenizer=None, max_new_tokens=2048, sampling=True,
             system_prompt="", stream=False, **kwargs):
        """MiniCPM-V 2.6's interface and checks: `msgs` is [{"role": "user" | "assistant",
        "content": [PIL images and str]}], a user turn first; streaming only when sampling."""
        if tokenizer is None or not msgs:
            raise ValueError("chat needs msgs and a tokenizer")
        assert sampling or not stream, "if use stream mode, make sure sampling=True"
        images = [image] if image is not None else []
        question = ""
        for index, message in enumerate(msgs):
            assert message["role"] in ("user", "assistant"), message["role"]
            assert index or message["role"] == "user", "The role of first msg should be user"
            content = message["content"]
            parts = [content] if isinstance(content, str) else content
            for part in parts:
                if isinstance(part, str):
                    question = part
                elif isinstance(part, Image.Image):
                    if message["role"] == "user":
                        images.append(part)
                else:
                    raise TypeError(f"a msgs part is a {type(part).__name__}")
        words = answer_for(images, question, system_prompt).split(" ")[:max_new_tokens]
        if stream:
            return (word if i == 0 else " " + word for i, word in enumerate(words))
        return " ".join(words)
'''


def answer_for(
    sizes: list[tuple[int, int]], question: str, max_words: int = 2048, system: str = ""
) -> str:
    """What the model's `chat` answers for images of these (width, height) sizes (and, when
    given, its `system_prompt`)."""
    listed = ", ".join(f"{width}x{height}" for width, height in sizes)
    said = f"(system: {system}) " if system else ""
    words = f"{said}{len(sizes)} image(s) [{listed}] asked: {question}".split(" ")
    return " ".join(words[:max_words])


def write_custom_code_model(out_dir: str | Path) -> Path:
    """Write the custom-code model directory to `out_dir` (created if missing) and return it."""
    import torch
    from safetensors.torch import save_file

    from vlm_gateway.cli.tiny_tokenizer import build_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "configuration_tiny.py").write_text(CONFIGURATION.lstrip())
    (out / "modeling_tiny.py").write_text(MODELING.lstrip())
    config = {
        "model_type": MODEL_TYPE,
        "architectures": ["TinyChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_tiny.TinyChatConfig",
            "AutoModel": "modeling_tiny.TinyChatModel",
        },
        "hidden_size": 4,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file({"proj.weight": torch.eye(4)}, out / "model.safetensors", metadata={"format": "pt"})
    build_tokenizer(named_image_token=False, max_length=512).save_pretrained(out)
    return out
