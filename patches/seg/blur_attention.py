"""The SEG self-attention replace: attention with blurred queries on some rows of the batch."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..engine.attention import AttentionFn, default_attention
from ..engine.grid import token_grid
from .seg_math import blur_tokens, is_identity, is_infinite, mean_query


def blurred_attention(sigma: float, first_row: int = 0, rows: int | None = None, when: Any = True
                      ) -> Callable[[AttentionFn], AttentionFn]:
    """make(inner) for attention.set_replace / options_set_replace.

    Rows [first_row:] get blurred queries; rows before it run inner untouched. With rows set, a call whose
    batch is not that size passes straight to inner (a forked forward only blurs its appended twin rows), and
    so does every call while `when` is falsy (the fork's flag: the batch has not widened).
    Infinite sigma makes every query of an image the same, so every output token is the same too: with
    ComfyUI's own attention inner, one query per image is attended and broadcast. Another pack's function
    may assume as many queries as keys, so it gets the full mean-query tensor instead.
    """

    def make(inner: AttentionFn) -> AttentionFn:
        single_query = is_infinite(sigma) and inner is default_attention

        def seg_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
            skip = rows is not None and q.shape[0] != rows
            if is_identity(sigma) or not when or skip or first_row >= q.shape[0]:
                return inner(q, k, v, extra)
            r = first_row
            if single_query:
                out = inner(mean_query(q[r:]), k[r:], v[r:], extra).expand(-1, q.shape[1], -1)
                return out if r == 0 else torch.cat([inner(q[:r], k[:r], v[:r], extra), out])
            hw = token_grid(tuple(extra["original_shape"][-2:]), q.shape[1])
            qb = blur_tokens(q[r:], hw, sigma)
            qb = qb.contiguous() if r == 0 else torch.cat([q[:r], qb])
            return inner(qb, k, v, extra)

        return seg_attention

    return make
