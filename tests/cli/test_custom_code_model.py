"""The tiny custom-code model directory (tests/support/custom_code_model.py): `auto_map` code
loaded with `trust_remote_code` fully offline, answering through MiniCPM-V's `chat`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.support.custom_code_model import answer_for, write_custom_code_model
from tests.support.processes import REPO

# Run in a fresh interpreter: HF_HUB_OFFLINE and HF_MODULES_CACHE are read when transformers is
# imported, and the remote code must not land in the user's cache.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from PIL import Image
    from transformers import AutoModel, AutoTokenizer

    path = sys.argv[1]
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    image = Image.new("RGB", (40, 30))
    msgs = [{"role": "user", "content": [image, "What is in the image?"]}]
    print(json.dumps({
        "class": type(model).__name__,
        "module": type(model).__module__,
        "answer": model.chat(image=None, msgs=msgs, tokenizer=tokenizer),
        "short": model.chat(msgs=msgs, tokenizer=tokenizer, max_new_tokens=3, sampling=False),
        "stream": list(model.chat(msgs=msgs, tokenizer=tokenizer, stream=True)),
        "eos": tokenizer.eos_token,
    }))
    """
)


def test_the_custom_code_model_loads_offline_and_chats(tmp_path):
    model_dir = write_custom_code_model(tmp_path / "model")
    assert json.loads((model_dir / "config.json").read_text())["auto_map"]["AutoModel"] == (
        "modeling_tiny.TinyChatModel"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["class"] == "TinyChatModel"
    assert result["module"].startswith("transformers_modules.")  # the directory's own code
    expected = answer_for([(40, 30)], "What is in the image?")
    assert result["answer"] == expected
    assert result["short"] == answer_for([(40, 30)], "What is in the image?", max_words=3)
    assert "".join(result["stream"]) == expected and len(result["stream"]) > 1
    assert result["eos"] == "</s>"
    assert any((tmp_path / "modules").rglob("modeling_tiny.py"))
