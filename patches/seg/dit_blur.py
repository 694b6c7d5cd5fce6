"""SEG's blurred joint attention on a DiT block: the main image's queries blurred on its token grid.

The queries arrive after RoPE (Flux applies it inside its attention function), so blurring them is exactly
blurring the pre-softmax logits along the query axis (seg.md 5.4). Text tokens, and reference-latent tokens
after the image, keep their own queries; keys and values are untouched, as in the UNet SEG.
"""
from __future__ import annotations

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


def dit_blur_op(sigma: float) -> Op:
    def op(call: JointCall) -> torch.Tensor:
        if is_identity(sigma):
            return call.attend(call.q, call.k, call.v)
        return call.attend(blurred_image_queries(call, sigma), call.k, call.v)

    return op
