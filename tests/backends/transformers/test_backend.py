"""The transformers backend through the real gateway server, driven by the official openai SDK,
on the tiny random LLaVA-JoyCaption, Idefics3 and Qwen2-VL (their words are noise: these tests
check shapes, counts, batching and that answers equal the seed's recipe)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.support.images import image_message, png_bytes, png_data_url
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess
from tests.support.torch_device import TEST_DEVICE

pytest.importorskip("torch")

QUESTION = "Describe the picture."
SYSTEM = "You are a helpful image captioner."
MAX_TOKENS = 12
MODELS = {
    "llava-joycaption": "tiny-joycaption",
    "idefics3": "tiny-idefics3",
    "qwen2vl": "tiny-qwen2vl",
}


@pytest.fixture(scope="module")
def gateway(tiny_models, workdir):
    entry = {"backend": "transformers", "device": TEST_DEVICE, "max_batch_size": 8}
    config = {
        "models": [
            {**entry, "name": name, "model": str(tiny_models[key]), "batch_wait_ms": 300}
            | ({"system_prompt": SYSTEM} if key == "llava-joycaption" else {})
            for key, name in MODELS.items()
        ]
    }
    with GatewayProcess(config, workdir).start(wait_ready=False) as process:
        wait_until(lambda: _all_ready(process.url), "the models to load", deadline_s=120)
        yield process


def _all_ready(url: str) -> bool:
    models = httpx.get(url + "/ready", timeout=5).json()["models"]
    return all(models[name]["ready"] for name in MODELS.values())


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(tiny_models):
    """The seed's recipe, per model: processor chat template + `generate`, one at a time."""
    return {
        key: SeedRecipe(tiny_models[key], SYSTEM if key == "llava-joycaption" else None)
        for key in MODELS
    }


class SeedRecipe:
    def __init__(self, model_dir, system: str | None) -> None:
        from transformers import AutoModelForImageTextToText

        from vlm_gateway.backends.transformers.processor import load_processor

        self.processor = load_processor(model_dir)
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
        self.system = system

    def inputs(self, image_seeds: int | tuple[int, ...], text: str = QUESTION):
        from PIL import Image

        seeds = image_seeds if isinstance(image_seeds, tuple) else (image_seeds,)
        images = [
            {"type": "image", "image": Image.open(io.BytesIO(png_bytes(seed=s))).convert("RGB")}
            for s in seeds
        ]
        messages = [{"role": "system", "content": [{"type": "text", "text": self.system}]}]
        user = {"role": "user", "content": [*images, {"type": "text", "text": text}]}
        conversation = ([*messages] if self.system else []) + [user]
        return self.processor.apply_chat_template(
            conversation,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )

    def answer(self, image_seeds: int | tuple[int, ...], text: str = QUESTION) -> str:
        import torch

        inputs = self.inputs(image_seeds, text)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        return self.processor.tokenizer.decode(new, skip_special_tokens=True)


def ask(client, name: str, image_seed: int = 1, **fields):
    messages = fields.pop("messages", None) or [
        image_message(QUESTION, png_data_url(seed=image_seed))
    ]
    fields.setdefault("max_tokens", MAX_TOKENS)
    fields.setdefault("temperature", 0)
    return client.chat.completions.create(model=name, messages=messages, **fields)


def replica(gateway, name: str) -> dict:
    return httpx.get(gateway.url + "/ready", timeout=5).json()["models"][name]["replicas"][0]


@pytest.mark.parametrize("key", MODELS)
def test_json_answer_with_an_image_is_the_seed_recipes(client, reference, key):
    answer = ask(client, MODELS[key])
    choice = answer.choices[0]
    assert choice.message.content == reference[key].answer(1)
    assert choice.finish_reason in ("stop", "length")
    prompt_tokens = int(reference[key].inputs(1)["attention_mask"].sum())
    assert answer.usage.prompt_tokens == prompt_tokens  # the image's tokens included
    assert 1 <= answer.usage.completion_tokens <= MAX_TOKENS


@pytest.mark.parametrize("key", MODELS)
def test_streamed_answer_comes_in_pieces_and_equals_the_json_one(client, key):
    whole = ask(client, MODELS[key], image_seed=2).choices[0].message.content
    stream = ask(
        client, MODELS[key], image_seed=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == whole
    assert len(pieces) > 1  # per token, not the whole answer at the end
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


# Prompts of different lengths and image counts in one batch: each row's tensors are padded
# and joined as the processor would batch them.
BATCH = [
    ((3,), QUESTION),
    ((4,), "Describe the picture in many more words, please."),
    ((5, 6), QUESTION),
    ((7,), "Hi."),
]


@pytest.mark.parametrize("key", MODELS)
def test_concurrent_greedy_answers_are_batched_and_equal_one_at_a_time(
    gateway, client, reference, key
):
    name = MODELS[key]
    before = replica(gateway, name)["largest_batch"]

    def send(request):
        seeds, text = request
        parts = [image_message(None, png_data_url(seed=s))["content"][0] for s in seeds]
        messages = [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]
        return ask(client, name, messages=messages)

    with ThreadPoolExecutor(len(BATCH)) as pool:
        answers = list(pool.map(send, BATCH))
    assert replica(gateway, name)["largest_batch"] > max(before, 1)
    expected = [reference[key].answer(seeds, text) for seeds, text in BATCH]
    assert [a.choices[0].message.content for a in answers] == expected
    prompt_tokens = [int(reference[key].inputs(*r)["attention_mask"].sum()) for r in BATCH]
    assert [a.usage.prompt_tokens for a in answers] == prompt_tokens


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"extra_body": {"guided_json": {}}}, "guided_json"),
    ],
)
def test_an_unsupported_field_is_a_400_naming_it(client, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, MODELS["idefics3"], **fields)
    assert caught.value.body["param"] == param
    assert param in caught.value.body["message"]


def test_stop_string_cuts_the_answer(client, reference):
    whole = ask(client, MODELS["llava-joycaption"]).choices[0].message.content
    stop = whole[3:5]
    answer = ask(client, MODELS["llava-joycaption"], stop=[stop]).choices[0]
    assert answer.message.content == whole[: whole.index(stop)]
    assert answer.finish_reason == "stop"


def test_n_choices_and_sampling_with_a_seed_repeat(client):
    fields = {"n": 2, "temperature": 0.6, "top_p": 0.9, "seed": 7}
    first = ask(client, MODELS["llava-joycaption"], **fields)
    again = ask(client, MODELS["llava-joycaption"], **fields)
    assert len(first.choices) == 2
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
