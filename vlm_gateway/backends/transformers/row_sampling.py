"""Each row's own sampling inside one shared `generate()` call.

transformers applies one set of sampling settings (and one random generator) to a whole batch,
so rows asking for different temperatures, top-p, top-k, repetition penalties or seeds could
not share a call. Here the batch runs greedy and `RowSampler`, a logits processor that runs
last, does each row's sampling itself: its repetition penalty, temperature, top-k and top-p (in
transformers' order, as its own processors compute them), then a draw from the row's own
seeded generator. The drawn token is the only one left finite, so greedy's argmax takes it.
Greedy rows without a penalty pass untouched: their answers are transformers' greedy answers.

A row's seed alone decides its draws, whatever else shares the batch: a request with a seed
gets the same answer alone or beside others. Runs in the model thread; imports torch.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from transformers.generation.logits_process import LogitsProcessor

if TYPE_CHECKING:
    from transformers import GenerationConfig
    from vlm_gateway.backends.transformers.request import Sampling


@dataclass(frozen=True)
class RowPlan:
    """One row's sampling with the model's defaults filled in (what `generate` would use)."""

    sample: bool
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    seed: int

    @classmethod
    def of(cls, sampling: Sampling, defaults: GenerationConfig) -> RowPlan:
        def pick(name: str, fallback: Any) -> Any:
            said = getattr(sampling, name)
            if said is not None:
                return said
            default = getattr(defaults, name, None)
            return fallback if default is None else default

        sample = sampling.do_sample if sampling.do_sample is not None else defaults.do_sample
        return cls(
            sample=bool(sample),
            temperature=float(pick("temperature", 1.0)),
            top_p=float(pick("top_p", 1.0)),
            top_k=int(pick("top_k", 0)),
            repetition_penalty=float(pick("repetition_penalty", 1.0)),
            seed=sampling.seed if sampling.seed is not None else secrets.randbits(48),
        )

    @property
    def untouched(self) -> bool:
        """Greedy with no penalty: the row's scores pass as they are."""
        return not self.sample and self.repetition_penalty == 1.0


# What `generate` itself must not apply on top of the rows' own settings.
NEUTRAL_GENERATE_KWARGS: dict[str, Any] = {
    "do_sample": False,
    "temperature": None,
    "top_p": None,
    "top_k": None,
    "repetition_penalty": None,
}


class RowSampler(LogitsProcessor):
    def __init__(self, plans: list[RowPlan], device: torch.device) -> None:
        self.plans = plans
        self.generators = [
            torch.Generator(device=device).manual_seed(plan.seed) if plan.sample else None
            for plan in plans
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> Any:
        if all(plan.untouched for plan in self.plans):
            return scores
        out = scores.clone()
        for row, plan in enumerate(self.plans):
            if plan.untouched:
                continue
            logits = scores[row].float()
            if plan.repetition_penalty != 1.0:
                logits = penalized(logits, input_ids[row], plan.repetition_penalty)
            if not plan.sample:
                out[row] = logits.to(out.dtype)
                continue
            token = _draw(logits, plan, self.generators[row])
            out[row] = float("-inf")
            out[row, token] = 0.0
        return out


def penalized(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' repetition penalty: tokens already in the row are made less likely."""
    seen = seen.clamp(max=logits.shape[-1] - 1)
    score = logits.gather(0, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(0, seen, score)


def _draw(logits: torch.Tensor, plan: RowPlan, generator: torch.Generator | None) -> int:
    probs = warped(logits, plan).softmax(dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def warped(logits: torch.Tensor, plan: RowPlan) -> torch.Tensor:
    """Temperature, top-k, top-p, each as transformers' warper computes it (one row)."""
    if plan.temperature > 0 and plan.temperature != 1.0:
        logits = logits / plan.temperature
    if 0 < plan.top_k < logits.shape[-1]:
        kth = torch.topk(logits, plan.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if plan.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - plan.top_p)
        drop[-1] = False  # the likeliest token always stays
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits
