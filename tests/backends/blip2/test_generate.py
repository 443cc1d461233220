"""The batched decoding loop on the tiny random BLIP-2, in process: a row's output does not
depend on the rows generated with it, and matches transformers' own generate()."""

from __future__ import annotations

import io
import random

import pytest

pytest.importorskip("torch")

from tests.support.images import png_bytes  # noqa: E402
from tests.support.torch_device import TEST_DEVICE  # noqa: E402
from vlm_gateway.backends.blip2.generate import RowSpec, generate_batch, load_blip2  # noqa: E402

WORDS = [
    "a",
    "the",
    "cat",
    "dog",
    "red",
    "blue",
    "sky",
    "what",
    "is",
    "in",
    "picture",
    "color",
    "left",
    "of",
    "under",
]


@pytest.fixture(scope="module")
def loaded(tiny_models):
    import torch

    # One intra-op thread: on a CI machine shared with other jobs, OpenMP threads waiting on
    # each other made these tests ten times slower; the results do not depend on it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_blip2(str(tiny_models["blip2"]), TEST_DEVICE, "auto", None)
    torch.set_num_threads(threads)


def pixels(loaded, seed: int, width: int = 30):
    from PIL import Image

    image = Image.open(io.BytesIO(png_bytes(width, 30, seed=seed))).convert("RGB")
    return loaded.pixel_values(image)


def varied_specs(loaded, count: int, **fields) -> list[RowSpec]:
    """Prompts of many lengths (so rows are left-padded), images and token limits."""
    rng = random.Random(7)
    specs = []
    for i in range(count):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(0, 30)))
        text = f"Question: {words} Answer:" if words else ""
        specs.append(
            RowSpec(
                prompt_ids=loaded.prompt_ids(text),
                pixel_values=pixels(loaded, i),
                max_new_tokens=rng.randrange(3, 40),
                **fields,
            )
        )
    return specs


def test_greedy_rows_are_the_same_alone_and_in_a_batch(loaded):
    specs = varied_specs(loaded, 24)
    alone = [generate_batch(loaded, [spec])[0] for spec in specs]
    batched = generate_batch(loaded, specs[:16]) + generate_batch(loaded, specs[16:])
    assert batched == alone
    assert len({result.text for result in alone}) > 5  # not one degenerate answer


def test_greedy_matches_transformers_generate(loaded):
    import torch

    for text in ("", "Question: what is in the picture? Answer:"):
        ids = loaded.prompt_ids(text)
        image = pixels(loaded, 3)
        reference = loaded.model.generate(
            pixel_values=image.to(loaded.device, loaded.dtype),
            input_ids=torch.tensor([ids], device=loaded.device),
            max_new_tokens=20,
            do_sample=False,
        )
        expected = loaded.decode(reference[0, len(ids) :].tolist())
        spec = RowSpec(
            prompt_ids=ids, pixel_values=image, max_new_tokens=20, strip_leading_space=False
        )
        assert generate_batch(loaded, [spec])[0].text == expected


def test_a_seeded_sample_does_not_depend_on_its_neighbours(loaded):
    specs = varied_specs(loaded, 6, temperature=1.0, top_p=0.9, seed=1234)
    alone = generate_batch(loaded, [specs[2]])[0]
    assert generate_batch(loaded, specs)[2] == alone


def test_streamed_text_adds_up_to_the_answer_and_stops_cut_it(loaded):
    spec = varied_specs(loaded, 1)[0]
    spec.max_new_tokens = 30
    full = generate_batch(loaded, [spec])[0].text
    assert len(full) >= 6
    stop = full[3:5]
    pieces: list[str] = []
    spec.stop, spec.on_text = (stop,), pieces.append
    result = generate_batch(loaded, [spec])[0]
    assert result.text == full[: full.find(stop)]
    assert result.finish_reason == "stop"
    assert "".join(pieces) == result.text
