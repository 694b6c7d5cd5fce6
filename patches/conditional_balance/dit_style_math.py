"""Balanced Style math on a DiT joint attention (the official SD3.5-Large port's processor), pure torch.

Tensors are one joint attention call's q, k, v as (batch, heads, tokens, head size), the main image's tokens
at `image` (text tokens before them; SD3's q/k are already RMS-normed, Flux's already rotated). The batch
carries one reference row at the head of every cond/uncond chunk (style_math.insert_rows), which fixes the
official port's hard-coded [uncond ref, uncond target, cond ref, cond target] layout.

What the official processor does in a block, and so what this does:
- AdaIN of the targets' image-token q (k, v) to the chunk reference's token statistics, when the block is in
  the q (k, v) top set of the step's table row; statistics per (image, head, channel) over the image tokens,
  std from the unbiased variance + 1e-5. The reference rows are left as they are.
- Shared attention when the block is in the q AND the k set (the port overwrites share_attention with
  adain_q and adain_k; SDXL takes the union): every row, the reference's own included, gets its chunk
  reference's image-token keys and values appended. Text tokens are never appended; the reference's own copy
  is unscaled, the targets' keys are scaled by shared_score_scale (official expand_first).

Token order differs from diffusers' ([image, appended reference, text] there, [text, image, appended reference]
here); keys and values are permuted alike, so attention is the same.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .style_math import adain, join_reference, split_reference


def adain_image_tokens(x: torch.Tensor, image: slice, cond_or_uncond: Sequence[int]) -> torch.Tensor:
    """x with every target row's image tokens given its chunk reference's per-channel token statistics."""
    img = x[:, :, image]
    refs, targets = split_reference(img, cond_or_uncond)  # [chunks, H, N, D], [chunks, m, H, N, D]
    styled = join_reference(refs, adain(targets, refs.unsqueeze(1)))
    return torch.cat([x[:, :, :image.start], styled.to(x.dtype), x[:, :, image.stop:]], dim=2)


def reference_tokens(x: torch.Tensor, image: slice, cond_or_uncond: Sequence[int],
                     target_scale: float = 1.0) -> torch.Tensor:
    """(batch, heads, image tokens, size): for every row, its chunk reference's image tokens (the targets' copy
    times target_scale, the reference's own copy unscaled)."""
    refs, targets = split_reference(x[:, :, image], cond_or_uncond)
    m = targets.shape[1]
    own = refs.unsqueeze(1)
    copies = own.expand(-1, m, *refs.shape[1:])
    if target_scale != 1.0:
        copies = copies * target_scale
    return torch.cat([own, copies], dim=1).reshape(-1, *refs.shape[1:])


def styled_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, image: slice, cond_or_uncond: Sequence[int],
               adain_q: bool, adain_k: bool, adain_v: bool, share: bool,
               ref_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The q, k, v a selected block attends with; k and v gain the reference's image tokens when shared."""
    if adain_q:
        q = adain_image_tokens(q, image, cond_or_uncond)
    if adain_k:
        k = adain_image_tokens(k, image, cond_or_uncond)
    if adain_v:
        v = adain_image_tokens(v, image, cond_or_uncond)
    if share:
        k = torch.cat([k, reference_tokens(k, image, cond_or_uncond, ref_scale)], dim=2)
        v = torch.cat([v, reference_tokens(v, image, cond_or_uncond)], dim=2)
    return q, k, v
