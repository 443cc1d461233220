"""Each row's own sampling inside one shared generate() call (backends/transformers/
row_sampling.py): the same arithmetic as transformers' own processors, draws decided by each
row's seed alone, and a batch of rows with different settings generated in one call whose
answers equal each row generated alone."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from tests.support.images import png_bytes

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402
from transformers.generation.logits_process import (  # noqa: E402
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from vlm_gateway.backends.transformers import generate  # noqa: E402
from vlm_gateway.backends.transformers.request import Sampling  # noqa: E402
from vlm_gateway.backends.transformers.row_sampling import (  # noqa: E402
    RowPlan,
    RowSampler,
    Settings,
    penalized,
    warped,
)
from vlm_gateway.backends.transformers.settings import TransformersBackendSettings  # noqa: E402

GREEDY = RowPlan(False, 1.0, 1.0, 0, 1.0, 0)
SAMPLED = RowPlan(True, 0.7, 0.9, 20, 1.0, 123)


def test_greedy_rows_pass_untouched():
    scores = torch.randn(2, 50)
    assert RowSampler([GREEDY, GREEDY], torch.device("cpu"))(torch.zeros(2, 3).long(), scores) is (
        scores
    )


def test_penalty_and_warpers_compute_what_transformers_computes():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 200, generator=generator)
    seen = torch.randint(0, 200, (1, 30), generator=generator)
    hf = RepetitionPenaltyLogitsProcessor(1.3)(seen, logits.clone())
    assert torch.allclose(penalized(logits, seen, torch.tensor([[1.3]])), hf)
    plan = RowPlan(True, 0.7, 0.8, 40, 1.0, 0)
    expected = logits.clone()
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(40), TopPLogitsWarper(0.8)):
        expected = warper(seen, expected)
    ours = warped(logits, Settings.of([plan], torch.device("cpu")))
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    finite = ~torch.isinf(ours)
    assert torch.allclose(ours[finite], expected[finite])


def test_a_rows_draws_follow_its_seed_whatever_shares_the_batch():
    ids = torch.zeros(3, 4).long()

    def draws(plans, row, steps=20):
        sampler = RowSampler(plans, torch.device("cpu"))
        picked = []
        for step in range(steps):
            row_scores = torch.randn(100, generator=torch.Generator().manual_seed(step))
            scores = row_scores.repeat(len(plans), 1)  # every row sees the same model output
            picked.append(int(sampler(ids[: len(plans)], scores)[row].argmax()))
        return picked

    alone = draws([SAMPLED], 0)
    beside = draws([replace(SAMPLED, seed=9), GREEDY, SAMPLED], 2)
    assert alone == beside
    assert draws([replace(SAMPLED, seed=124)], 0) != alone


def test_top_k_of_one_is_greedy():
    scores = torch.randn(1, 100)
    sampler = RowSampler([replace(SAMPLED, top_k=1, top_p=1.0)], torch.device("cpu"))
    assert int(sampler(torch.zeros(1, 2).long(), scores.clone())[0].argmax()) == int(
        scores[0].argmax()
    )


@pytest.fixture(scope="module")
def loaded(tiny_models):
    entry = TransformersBackendSettings.model_validate(
        {
            "name": "tiny",
            "backend": "transformers",
            "model": str(tiny_models["llava-joycaption"]),
            "device": "cpu",
        }
    )
    return generate.load(entry)


def _spec(sampling: Sampling, image_seed: int) -> generate.RowSpec:
    image = Image.open(io.BytesIO(png_bytes(seed=image_seed))).convert("RGB")
    conversation = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "Describe."}],
        }
    ]
    return generate.RowSpec(conversation, max_new_tokens=10, sampling=sampling)


def test_rows_with_different_sampling_share_one_call_and_answer_as_alone(loaded, monkeypatch):
    samplings = [
        Sampling(False, None, None, None, None, None),  # greedy
        Sampling(True, 0.8, 0.9, None, None, 11),
        Sampling(True, 1.3, None, 5, 1.2, 12),
        Sampling(False, None, None, None, 1.5, None),  # greedy with a penalty
    ]
    specs = [_spec(sampling, seed) for seed, sampling in enumerate(samplings)]
    alone = [generate.generate_batch(loaded, [spec])[0].text for spec in specs]
    calls = []
    original = loaded.model.generate
    monkeypatch.setattr(
        loaded.model, "generate", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    together = [row.text for row in generate.generate_batch(loaded, specs)]
    assert len(calls) == 1
    assert together == alone
    assert len(set(alone)) > 1
