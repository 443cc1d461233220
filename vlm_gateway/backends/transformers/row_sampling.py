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
    """Runs at every decoding step: the rows' settings are tensors built once, so a step costs
    one set of batched operations, not one per row. Each sampled row draws a uniform number from
    its own CPU generator (the same draws on any device) and takes the token where its
    cumulative probability passes it."""

    def __init__(self, plans: list[RowPlan], device: torch.device) -> None:
        self.untouched = all(plan.untouched for plan in plans)
        self.touched = torch.tensor([not p.untouched for p in plans], device=device)
        self.sampled = [row for row, plan in enumerate(plans) if plan.sample]
        self.generators = {
            row: torch.Generator().manual_seed(plans[row].seed) for row in self.sampled
        }
        self.settings = Settings.of(plans, device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> Any:
        if self.untouched:
            return scores
        logits = penalized(scores.float(), input_ids, self.settings.penalty)
        out = torch.where(self.touched[:, None], logits.to(scores.dtype), scores)
        if not self.sampled:
            return out
        rows = torch.tensor(self.sampled, device=scores.device)
        probs = warped(logits[rows], self.settings.subset(rows)).softmax(dim=-1)
        cumulative = probs.cumsum(dim=-1)
        # In (0, 1]: a token of zero probability is never where the sum first reaches it.
        uniform = [
            1.0 - torch.rand(1, generator=self.generators[row]).item() for row in self.sampled
        ]
        reach = torch.tensor(uniform, device=scores.device)[:, None] * cumulative[:, -1:]
        tokens = torch.searchsorted(cumulative, reach).clamp(max=probs.shape[-1] - 1)
        chosen = torch.full_like(out[rows], float("-inf")).scatter(1, tokens, 0.0)
        out[rows] = chosen
        return out


@dataclass(frozen=True)
class Settings:
    """The rows' penalty, temperature, top-k and top-p as columns (neutral where unused)."""

    penalty: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor  # 0: no cut
    top_p: torch.Tensor

    @classmethod
    def of(cls, plans: list[RowPlan], device: torch.device) -> Settings:
        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)[:, None]

        return cls(
            penalty=column([p.repetition_penalty for p in plans]),
            temperature=column([p.temperature if p.temperature > 0 else 1.0 for p in plans]),
            top_k=torch.tensor([p.top_k for p in plans], device=device),
            top_p=column([p.top_p for p in plans]),
        )

    def subset(self, rows: torch.Tensor) -> Settings:
        return Settings(
            self.penalty[rows], self.temperature[rows], self.top_k[rows], self.top_p[rows]
        )


def penalized(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """transformers' repetition penalty, a factor per row (1: none): tokens already in a row
    are made less likely."""
    seen = seen.clamp(max=logits.shape[-1] - 1)
    score = logits.gather(1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, seen, score)


def warped(logits: torch.Tensor, settings: Settings) -> torch.Tensor:
    """Temperature, top-k, top-p per row, each as transformers' warper computes it."""
    logits = logits / settings.temperature
    vocab = logits.shape[-1]
    k = torch.where((settings.top_k > 0) & (settings.top_k < vocab), settings.top_k, vocab)
    kth = torch.sort(logits, descending=True).values.gather(1, (k - 1)[:, None])
    logits = logits.masked_fill(logits < kth, float("-inf"))
    ordered, order = torch.sort(logits, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - settings.top_p)
    drop[:, -1] = False  # the likeliest token always stays
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
