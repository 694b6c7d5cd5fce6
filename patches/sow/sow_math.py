"""Selective One-Way Diffusion attention modulation (pure torch). OUR design: the SOW paper's equations for
the modulation, decays and indicator are missing from its text; docs/cow_sow.md writes this design down.

Self-attention logits S[q, k] (scaled q.k) of every row get a bias
    B[q, k] = w_t * g * ( -lambda_s * c(q) * (1 - c(k))          suppress condition -> non-condition
                          + lambda_e * w_d(q) * r(q) * c(k) )    enhance related -> condition
with c, r the condition / related-region indicators at the layer's grid (area fractions, r excludes c),
w_t = exp(-time_decay * u) for progress u <= time_cutoff (else 0), w_d = exp(-d(q) / distance_tau) with d
the distance from q to the condition's centre in units of the grid's longer side, and g the indicator gate.

Softmax ignores a per-query constant, and -lambda_s c(q) (1 - c(k)) = -lambda_s c(q) + lambda_s c(q) c(k), so
the same attention comes from the rank-1 bias f(q) c(k) with f = lambda_s c + lambda_e w_d r. It is never built
densely: one extra channel on q and k (zero on v) makes any scaled-dot-product attention add f c^T to its
logits.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CUDA_PAD = 8  # on CUDA the extra head channels are padded to a multiple of 8 so fused kernels still apply


@dataclass(frozen=True)
class SowParams:
    suppress: float = 2.0  # lambda_s, logits
    enhance: float = 1.0  # lambda_e, logits
    time_decay: float = 1.0  # rate of w_t over progress u in [0, 1]
    time_cutoff: float = 1.0  # no modulation after this progress
    distance_tau: float = 0.25  # w_d length scale, fraction of the grid's longer side
    threshold: float = 2.0  # indicator gate threshold (attention on the condition / its token share); <= 0: off
    near_fraction: float = 0.2  # the paper's "closest one-fifth" of related points used by the indicator
    gate: str = "soft"  # "soft": g = clamp(1 - I / threshold, 0, 1); "hard": g = [I < threshold]


@dataclass
class Regions:
    cond: torch.Tensor  # [N] condition indicator c
    related: torch.Tensor  # [N] related indicator r (condition removed)
    dist_w: torch.Tensor  # [N] w_d
    near: torch.Tensor  # [n] token indices of the related points closest to the condition centre
    f: torch.Tensor  # [N, 1] query factor (unscaled by w_t and g)
    g: torch.Tensor  # [N, 1] key factor

    @property
    def active(self) -> bool:
        return bool(self.cond.sum() > 0)


def to_grid(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[H, W] canvas-level mask -> [h * w] area fractions on a layer grid of any size."""
    m = mask.float()[None, None]
    return F.interpolate(m, size=grid, mode="area")[0, 0].flatten()


def box_mask(box: dict, hw: tuple[int, int]) -> torch.Tensor:
    """Normalized box {x, y, w, h} -> [H, W] mask with fractional edge coverage (exact area on any grid)."""
    h, w = hw
    ys = torch.arange(h, dtype=torch.float32)
    xs = torch.arange(w, dtype=torch.float32)

    def cover(lo: float, hi: float, idx: torch.Tensor) -> torch.Tensor:
        return (torch.minimum(idx + 1, torch.tensor(hi)) - torch.maximum(idx, torch.tensor(lo))).clamp(0, 1)

    cy = cover(box["y"] * h, (box["y"] + box["h"]) * h, ys)
    cx = cover(box["x"] * w, (box["x"] + box["w"]) * w, xs)
    return cy[:, None] * cx[None, :]


def cell_positions(grid: tuple[int, int]) -> torch.Tensor:
    """[N, 2] (y, x) cell centres in units of the grid's longer side."""
    h, w = grid
    side = float(max(h, w))
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / side
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / side
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)


def centre(weights: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return (weights[:, None] * pos).sum(0) / weights.sum().clamp_min(1e-8)


def time_weight(u: float, rate: float, cutoff: float) -> float:
    if u > cutoff + 1e-9:
        return 0.0
    return math.exp(-rate * max(u, 0.0))


def regions(cond_mask: torch.Tensor, related_mask: torch.Tensor | None, grid: tuple[int, int],
            params: SowParams) -> Regions:
    c = to_grid(cond_mask, grid).clamp(0, 1)
    r = torch.zeros_like(c) if related_mask is None else to_grid(related_mask, grid).clamp(0, 1) * (1 - c)
    pos = cell_positions(grid)
    if c.sum() > 0:
        d = (pos - centre(c, pos)).norm(dim=-1)
    else:
        d = torch.zeros_like(c)
    wd = torch.exp(-d / max(params.distance_tau, 1e-6))
    candidates = torch.nonzero(r >= 0.5).flatten()
    n = int(math.ceil(candidates.numel() * params.near_fraction)) if candidates.numel() else 0
    near = candidates[torch.argsort(d[candidates], stable=True)[:n]] if n else candidates
    f = (params.suppress * c + params.enhance * wd * r)[:, None]
    return Regions(c, r, wd, near, f, c[:, None].clone())


def indicator(q: torch.Tensor, k: torch.Tensor, heads: int, near: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """[B] attention mass that the near related queries put on the condition keys, over the condition's token
    share (1 = as much as uniform attention would). Only the near rows of the logits are formed."""
    b, n, inner = q.shape
    dh = inner // heads
    qn = q[:, near].view(b, -1, heads, dh).transpose(1, 2)  # [B, H, n, d]
    kh = k.view(b, k.shape[1], heads, dh).transpose(1, 2)  # [B, H, N, d]
    probs = torch.softmax((qn @ kh.transpose(-1, -2)).float() * dh ** -0.5, dim=-1)  # [B, H, n, N]
    mass = (probs * cond.to(probs)).sum(-1).mean(dim=(1, 2))
    share = float(cond.sum()) / cond.numel()
    return mass / max(share, 1e-8)


def gate(value: torch.Tensor, threshold: float, mode: str) -> torch.Tensor:
    if threshold <= 0:
        return torch.ones_like(value)
    if mode == "hard":
        return (value < threshold).to(value)
    if mode != "soft":
        raise ValueError(f"unknown gate mode {mode!r}")
    return (1 - value / threshold).clamp(0, 1)


def augmented_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, f: torch.Tensor,
                        g: torch.Tensor, attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int],
                                                          torch.Tensor]) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + f g^T) v through an unmodified attention function.

    q, k, v: [B, N, heads * d]; f, g: [B, N, r]. attend(q', k', v', d') must compute scaled-dot-product
    attention with scale 1 / sqrt(d') on head size d' = d + pad, as ComfyUI's attention does.
    """
    b, n, inner = q.shape
    d = inner // heads
    r = f.shape[-1]
    pad = -(-r // CUDA_PAD) * CUDA_PAD if q.is_cuda else r
    d2 = d + pad

    def extend(x: torch.Tensor, extra: torch.Tensor | None, scale: float) -> torch.Tensor:
        xh = x.view(b, x.shape[1], heads, d)
        tail = x.new_zeros(b, x.shape[1], heads, pad)
        if extra is not None:
            tail[..., :r] = extra.to(x)[:, :, None, :]
        if scale != 1.0:
            xh = xh * scale
        return torch.cat([xh, tail], -1).reshape(b, x.shape[1], heads * d2)

    q2 = extend(q, f * math.sqrt(d2), math.sqrt(d2 / d))
    k2 = extend(k, g, 1.0)
    v2 = extend(v, None, 1.0)
    out = attend(q2, k2, v2, d2)
    return out.view(b, n, heads, d2)[..., :d].reshape(b, n, heads * d)
