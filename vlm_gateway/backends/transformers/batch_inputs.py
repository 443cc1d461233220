"""One batch's model inputs joined from each request's own processor output, so the processor
runs once per request (when the request is checked and its tokens counted), never again for
the batch it lands in.

What a processor makes of a batch is, for the image-text-to-text processors transformers has,
what it makes of each conversation alone, joined:
- per-token tensors (`input_ids`, `attention_mask`, `token_type_ids`, `mm_token_type_ids`,
  Mllama's `cross_attention_mask`: one row, the prompt's length in dimension 1) are padded on
  the left to the longest prompt (`input_ids` with the pad token, the rest with zeros), as the
  tokenizer pads with `padding_side="left"`;
- every other tensor is concatenated along dimension 0 (images or patches: LLaVA's and
  Qwen2-VL's `pixel_values`, `image_grid_thw`; rows: Idefics3's `pixel_values` and
  `pixel_attention_mask`), zero-padded first where later dimensions differ (Idefics3's image
  count per row, LLaVA-NeXT's patch count per image), as the processors pad.
Where the rows do not fit that (keys that differ between rows, a value that is not a tensor),
`join` answers None and the caller runs the processor on the whole batch instead.

Imports torch: only the model thread's generation imports this module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformers import BatchFeature


def join(rows: Sequence[BatchFeature], pad_token_id: int) -> BatchFeature | None:
    """The batch the processor would have made of these rows' conversations, or None where
    they cannot simply be joined. Each row: one conversation's processor output."""
    from transformers import BatchFeature

    keys = list(rows[0].keys())
    if any(list(row.keys()) != keys for row in rows) or "input_ids" not in keys:
        return None
    if not all(isinstance(row[key], torch.Tensor) for row in rows for key in keys):
        return None
    length = max(int(row["input_ids"].shape[1]) for row in rows)
    joined: dict[str, torch.Tensor] = {}
    for key in keys:
        tensors = [row[key] for row in rows]
        if any(t.dim() != tensors[0].dim() or t.dim() == 0 for t in tensors):
            return None
        if all(_per_token(tensor, row) for tensor, row in zip(tensors, rows, strict=True)):
            fill = pad_token_id if key == "input_ids" else 0
            joined[key] = torch.cat([_left_padded(t, length, fill) for t in tensors])
        else:
            joined[key] = _concatenated(tensors)
    return BatchFeature(data=joined)


def _per_token(tensor: torch.Tensor, row: BatchFeature) -> bool:
    ids = row["input_ids"]
    return tensor.dim() >= 2 and tensor.shape[0] == 1 and tensor.shape[1] == ids.shape[1]


def _left_padded(tensor: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    # F.pad lists (before, after) pairs from the last dimension back: only dimension 1 grows.
    pads = [0, 0] * (tensor.dim() - 2) + [missing, 0]
    return F.pad(tensor, pads, value=fill)


def _concatenated(tensors: list[torch.Tensor]) -> torch.Tensor:
    widest = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for tensor in tensors:
        pads: list[int] = []
        for dim in range(tensor.dim() - 1, 0, -1):
            pads += [0, widest[dim - 1] - tensor.shape[dim]]
        padded.append(F.pad(tensor, pads) if any(pads) else tensor)
    return torch.cat(padded)
