"""A transformers model's generation defaults: its own `generation_config` (from the model
directory's generation_config.json), with the entry's `generation:` mapping over it. A request's
fields go over both, as the arguments of `generate()` go over its config.

Pure Python: the config object is transformers' `GenerationConfig`, handled by attribute."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from vlm_gateway.config.settings import Section

if TYPE_CHECKING:
    from transformers import GenerationConfig

# Tokens generated when neither the request, the entry nor the model's own config says.
FALLBACK_MAX_NEW_TOKENS = 256
_SAMPLING = ("temperature", "top_p", "top_k", "repetition_penalty")


class GenerationDefaults(Section):
    """`generation:` of a transformers entry: what a request that does not say gets."""

    # 0: greedy unless the request asks for sampling; > 0: sampling at this temperature.
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None  # 0: no top-k cut
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    max_new_tokens: Annotated[int, Field(ge=1)] | None = None

    def plan_line(self) -> str:
        said = self.model_dump(exclude_none=True)
        return "generation defaults: " + ", ".join(f"{k} {v:g}" for k, v in said.items())


def with_defaults(
    config: GenerationConfig, entry: GenerationDefaults | None, max_new_tokens: int | None
) -> GenerationConfig:
    """A copy of the model's `config` with the entry's defaults over it; `max_new_tokens` is the
    entry's (`generation.max_new_tokens` or `default_max_tokens`), else the model's own, else
    FALLBACK_MAX_NEW_TOKENS."""
    merged = copy.deepcopy(config)
    if entry is not None:
        for name in _SAMPLING:
            value = getattr(entry, name)
            if value is not None and not (name == "temperature" and value == 0):
                setattr(merged, name, value)
        if entry.temperature is not None:
            merged.do_sample = entry.temperature > 0
    merged.max_new_tokens = max_new_tokens or merged.max_new_tokens or FALLBACK_MAX_NEW_TOKENS
    return merged


def describe(config: GenerationConfig) -> dict[str, Any]:
    """The defaults in force, for /v1/models and /ready."""
    fields = ("do_sample", *_SAMPLING, "max_new_tokens")
    return {name: getattr(config, name, None) for name in fields}
