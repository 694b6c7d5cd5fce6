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

One deliberate difference, `split_shared`: the port appends the reference's image tokens to the reference's own
keys too (concat_first runs on the whole batch). In SDXL's self-attention that is a no-op (every key doubled),
but in a joint attention only the image keys are doubled, so the reference gives its own image twice the weight
against its text: the reference's features drift from what the model computes for that image. Conduit keeps the
reference unchanged (plain attention for its rows, as in the SDXL Balanced Style), which also saves the
reference rows' extra keys; the targets' attention is exactly the port's (rows of one attention call are
independent). `styled_qkv` is the port's single call, kept to prove the equality.
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


def adain_features(qkv: tuple[torch.Tensor, ...], flags: tuple[bool, ...], image: slice,
                   cond_or_uncond: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """q, k, v with AdaIN on the image tokens of those whose flag is set."""
    return tuple(adain_image_tokens(x, image, cond_or_uncond) if on else x for x, on in zip(qkv, flags))


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
    q, k, v = adain_features((q, k, v), (adain_q, adain_k, adain_v), image, cond_or_uncond)
    if share:
        k = torch.cat([k, reference_tokens(k, image, cond_or_uncond, ref_scale)], dim=2)
        v = torch.cat([v, reference_tokens(v, image, cond_or_uncond)], dim=2)
    return q, k, v


def split_shared(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, image: slice, cond_or_uncond: Sequence[int],
                 adain_q: bool, adain_k: bool, adain_v: bool, ref_scale: float = 1.0
                 ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """A shared block's two attention calls: ((q, k, v) of the reference rows, plain), ((q, k, v) of the target
    rows, AdaIN'ed, with their chunk reference's image tokens appended to k and v). Rows in chunk order."""
    q, k, v = adain_features((q, k, v), (adain_q, adain_k, adain_v), image, cond_or_uncond)
    (qr, qt), (kr, kt), (vr, vt) = (split_reference(x, cond_or_uncond) for x in (q, k, v))
    m = qt.shape[1]

    def appended(targets: torch.Tensor, refs: torch.Tensor, scale: float) -> torch.Tensor:
        ref = refs[:, :, image].unsqueeze(1).expand(-1, m, -1, -1, -1)
        return torch.cat([targets, ref * scale if scale != 1.0 else ref], dim=3)

    kt, vt = appended(kt, kr, ref_scale), appended(vt, vr, 1.0)
    flat = tuple(x.reshape(-1, *x.shape[2:]) for x in (qt, kt, vt))
    return (qr, kr, vr), flat


def join_rows(ref_out: torch.Tensor, target_out: torch.Tensor, chunks: int) -> torch.Tensor:
    """The two calls' outputs (batch-first) back in batch order: each chunk's reference row, then its targets."""
    return join_reference(ref_out, target_out.reshape(chunks, -1, *target_out.shape[1:]))
