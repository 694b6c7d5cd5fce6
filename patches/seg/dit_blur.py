"""SEG's blurred joint attention on a DiT block: the main image's queries blurred on its token grid.

The queries arrive after RoPE (Flux applies it inside its attention function), so blurring them is exactly
blurring the pre-softmax logits along the query axis (seg.md 5.4). Text tokens, and reference-latent tokens
after the image, keep their own queries; keys and values are untouched, as in the UNet SEG.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..engine.dit_attention import JointCall, Op, image_tokens, with_image_tokens
from .seg_math import blur_tokens, is_identity, is_infinite


def blurred_image_queries(call: JointCall, sigma: float) -> torch.Tensor:
    """q with the main image's tokens blurred (infinite sigma: all of them set to their mean)."""
    img = image_tokens(call.q, call)
    if is_infinite(sigma):
        blurred = img.mean(dim=1, keepdim=True).expand_as(img)
    else:
        blurred = blur_tokens(img, call.grid, sigma)
    return with_image_tokens(call.q, call, blurred)


def dit_blur_op(sigma: float, first_row: int = 0, rows: int | None = None, when: Any = True) -> Op:
    """Rows [first_row:] get blurred image queries; with rows set, a call of another batch size is left alone,
    and so is every call while `when` is falsy (the prefix fork's twin rows, as in blur_attention)."""

    def op(call: JointCall) -> torch.Tensor:
        q = call.q
        if is_identity(sigma) or not when or (rows is not None and q.shape[0] != rows) or first_row >= q.shape[0]:
            return call.attend(q, call.k, call.v)
        if first_row == 0:
            return call.attend(blurred_image_queries(call, sigma), call.k, call.v)
        twins = replace(call, q=q[first_row:])
        return call.attend(torch.cat([q[:first_row], blurred_image_queries(twins, sigma)]), call.k, call.v)

    return op
