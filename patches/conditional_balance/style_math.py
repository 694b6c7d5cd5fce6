"""StyleAligned math for Conditional Balance: AdaIN on projected features, shared reference attention, and the
batch layout that carries one reference row per cond/uncond chunk (pure torch, no ComfyUI).

Tensors are ComfyUI's attention layout [batch, tokens, heads * dim_head]. Per-channel statistics over tokens are
the same on this layout as on the head-split [batch, heads, tokens, dim_head] view the official code uses.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

EPS = 1e-5  # official calc_mean_std: std = sqrt(unbiased var + 1e-5)


def channel_stats(x: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over the token axis (-2), per row and channel; std from the unbiased variance."""
    mean = x.mean(dim=-2, keepdim=True)
    std = (x.var(dim=-2, keepdim=True, unbiased=True) + eps).sqrt()
    return mean, std


def adain(x: torch.Tensor, ref: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Give every row of x the per-channel token statistics of ref (ref broadcasts over rows)."""
    mean, std = channel_stats(x, eps)
    ref_mean, ref_std = channel_stats(ref, eps)
    return (x - mean) / std * ref_std + ref_mean


def style_layer_count(strength: float, n_layers: int) -> int:
    """Official lambda_S rule: N = int(lambda_S * L) for 0 < lambda_S <= 1."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"style strength {strength} is outside [0, 1]")
    return int(strength * n_layers)


def top_indices(scores: torch.Tensor, n: int) -> list[int]:
    """First n layer indices in ascending score order (lowest score = most style-sensitive), ties by index."""
    if n <= 0:
        return []
    order = torch.argsort(torch.as_tensor(scores, dtype=torch.float64), stable=True)
    return [int(i) for i in order[:n]]


def extend_with_reference(own: torch.Tensor, ref: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """[own tokens ; scale * reference tokens] along the token axis (StyleAligned concat_first).

    ref broadcasts over the leading dims of own: [1, N_ref, C] for [B, N, C], or [chunks, 1, N_ref, C] for
    targets grouped as [chunks, m, N, C]."""
    if scale != 1.0:
        ref = ref * scale
    return torch.cat([own, ref.expand(*own.shape[:-2], *ref.shape[-2:])], dim=-2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain multi-head softmax attention on [B, N, H*D] tensors, with an optional additive logit bias."""
    b, n, c = q.shape
    d = c // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, t.shape[1], heads, d).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=bias)
    return out.transpose(1, 2).reshape(b, n, c)


def reference_bias(n_own: int, n_ref: int, shift: float, like: torch.Tensor) -> torch.Tensor:
    """Additive logit bias that adds shift to every appended reference token (official shared_score_shift)."""
    bias = torch.zeros(n_own + n_ref, dtype=like.dtype, device=like.device)
    bias[n_own:] = shift
    return bias.view(1, -1)  # broadcasts over batch, heads and queries


# ---- batch layout: one reference row at the head of every cond/uncond chunk -------------------------------------

def _chunks(batch: int, cond_or_uncond: Sequence[int]) -> int:
    chunks = len(cond_or_uncond)
    if chunks == 0 or batch % chunks:
        raise ValueError(f"batch {batch} does not split into {chunks} cond/uncond chunks")
    return chunks


def insert_rows(x: torch.Tensor, cond_or_uncond: Sequence[int], ref: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, ...] with a reference row at the head of every chunk: chunk c of m rows becomes [ref_c, rows].

    ref is [1, ...] (the same row for every chunk) or [chunks, ...]; None copies each chunk's first row, which
    is how the reference inherits its chunk's conditioning. The chunk order (cond_or_uncond) is unchanged."""
    chunks = _chunks(x.shape[0], cond_or_uncond)
    xv = x.view(chunks, x.shape[0] // chunks, *x.shape[1:])
    if ref is None:
        head = xv[:, :1]
    else:
        head = ref.to(dtype=x.dtype, device=x.device).expand(chunks, *x.shape[1:]).unsqueeze(1)
    return torch.cat([head, xv], dim=1).reshape(-1, *x.shape[1:])


def insert_zero_rows(x: torch.Tensor, cond_or_uncond: Sequence[int]) -> torch.Tensor:
    return insert_rows(x, cond_or_uncond, torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device))


def split_reference(x: torch.Tensor, cond_or_uncond: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch laid out by insert_rows: (references [chunks, ...], targets [chunks, m, ...]) as views."""
    chunks = _chunks(x.shape[0], cond_or_uncond)
    per = x.shape[0] // chunks
    if per < 2:
        raise ValueError(f"batch {x.shape[0]} is not {chunks} chunks of a reference plus targets")
    xv = x.view(chunks, per, *x.shape[1:])
    return xv[:, 0], xv[:, 1:]


def join_reference(refs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Inverse of split_reference: [chunks, ...] and [chunks, m, ...] back to [chunks * (m + 1), ...]."""
    return torch.cat([refs.unsqueeze(1).to(targets.dtype), targets], dim=1).reshape(-1, *targets.shape[2:])


def strip_rows(x: torch.Tensor, cond_or_uncond: Sequence[int]) -> torch.Tensor:
    """Inverse of insert_rows: the original rows only, in their original order."""
    _, targets = split_reference(x, cond_or_uncond)
    return targets.reshape(-1, *x.shape[1:])
