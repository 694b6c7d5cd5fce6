"""Split a batched UNet call into its cond/uncond chunks using cond_or_uncond (pure torch).

ComfyUI stacks one chunk per entry of transformer_options["cond_or_uncond"] (0 = positive, 1 = negative,
other indices for extra conds), each chunk holding the same number of images. The order is not fixed.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

COND = 0
UNCOND = 1


def chunk_size(batch: int, cond_or_uncond: Sequence[int]) -> int:
    n = len(cond_or_uncond)
    if n == 0 or batch % n:
        raise ValueError(f"batch {batch} does not split into {n} cond/uncond chunks")
    return batch // n


def chunk_slices(batch: int, cond_or_uncond: Sequence[int]) -> list[tuple[int, slice]]:
    """[(kind, slice)] for every chunk, in batch order."""
    size = chunk_size(batch, cond_or_uncond)
    return [(kind, slice(i * size, (i + 1) * size)) for i, kind in enumerate(cond_or_uncond)]


def rows_of(batch: int, cond_or_uncond: Sequence[int], kind: int) -> torch.Tensor:
    """Row indices of every chunk of the given kind."""
    rows = [torch.arange(s.start, s.stop) for k, s in chunk_slices(batch, cond_or_uncond) if k == kind]
    return torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)


def kind_mask(batch: int, cond_or_uncond: Sequence[int], kind: int) -> torch.Tensor:
    """Bool [batch] that is True on rows belonging to chunks of the given kind."""
    mask = torch.zeros(batch, dtype=torch.bool)
    for k, s in chunk_slices(batch, cond_or_uncond):
        if k == kind:
            mask[s] = True
    return mask
