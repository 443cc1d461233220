"""offline_worker.py's Captioner without vLLM (a stand-in `LLM`): videos and audio files go to
`LLM.chat` as `video_url` / `audio_url` parts with file: URLs, as `vllm serve` gets them from
the gateway, and never the image-only fast way; images keep theirs; an item whose load failed
is its own error."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from vlm_gateway.backends.vllm.offline_worker import Captioner, Item


class FakeLLM:
    """What Captioner uses of vLLM's `LLM`: chat and generate, each answering with the URL or
    the image it got, so a test sees which way every item went."""

    def __init__(self) -> None:
        self.chats: list[list[dict[str, Any]]] = []
        self.generated: list[dict[str, Any]] = []

    def get_default_sampling_params(self) -> SimpleNamespace:
        return SimpleNamespace(max_tokens=None, temperature=None)

    def chat(self, conversations, params, use_tqdm, chat_template) -> list[SimpleNamespace]:
        self.chats += conversations
        return [_output(conv[0]["content"][0]) for conv in conversations]

    def generate(self, prompts, params, use_tqdm) -> list[SimpleNamespace]:
        self.generated += prompts
        return [_output(prompt["multi_modal_data"]) for prompt in prompts]


def _output(what: object) -> SimpleNamespace:
    text = repr(what)
    return SimpleNamespace(
        prompt_token_ids=[1], outputs=[SimpleNamespace(text=text, token_ids=[7])]
    )


CONFIG = {"max_tokens": 8, "temperature": 0.0, "prompt": "Describe it.", "chat_template": None}


def test_video_and_audio_go_to_chat_as_their_own_parts():
    llm = FakeLLM()
    captioner = Captioner(llm, CONFIG)
    batch = [
        Item(1, "/spool/a.png", "an image"),
        Item(2, "/spool/v.mp4", None, modality="video"),
        Item(3, "/spool/t.wav", None, modality="audio"),
        Item(4, "/spool/bad.png", None, "OSError: cannot identify"),
    ]
    replies = dict(captioner.caption(batch))
    assert replies[4] == {"error": "OSError: cannot identify"}
    parts = [conv[0]["content"] for conv in llm.chats]
    assert {"type": "video_url", "video_url": {"url": "file:///spool/v.mp4"}} in [
        p[0] for p in parts
    ]
    assert {"type": "audio_url", "audio_url": {"url": "file:///spool/t.wav"}} in [
        p[0] for p in parts
    ]
    assert all(p[1] == {"type": "text", "text": "Describe it."} for p in parts)
    assert "file:///spool/v.mp4" in replies[2]["caption"] and replies[2]["tokens"] == 1
    assert "file:///spool/t.wav" in replies[3]["caption"]
    assert "file:///spool/a.png" in replies[1]["caption"]  # the image's checked `LLM.chat`


def test_media_never_takes_the_image_prompts_fast_way():
    llm = FakeLLM()
    captioner = Captioner(llm, CONFIG)
    captioner.checked, captioner.prompt_ids = True, [5, 6]  # the fast way is on for images
    replies = dict(
        captioner.caption(
            [Item(1, "/spool/a.png", "an image"), Item(2, "/spool/v.mp4", None, modality="video")]
        )
    )
    assert llm.generated == [
        {"prompt_token_ids": [5, 6], "multi_modal_data": {"image": "an image"}}
    ]
    assert [conv[0]["content"][0]["type"] for conv in llm.chats] == ["video_url"]
    assert "image" in replies[1]["caption"] and "video_url" in replies[2]["caption"]
