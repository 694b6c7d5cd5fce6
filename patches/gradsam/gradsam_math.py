"""Abs-Grad-SAM pure math: importance maps, threshold, blur, dilation, schedule picks, latent replacement.

No ComfyUI imports (a unit test imports this module in a process without ComfyUI). Shapes: importance and
masks are [B, C, H, W] (C = 1 for the spatial maps the sampler builds); attention is [B, heads, N, T].
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

SCORE_MODES = ("abs", "gradsam")

# Progress (ComfyUI percent, 0 = start) of the reference's manipulation timesteps t = 780, 520, 320 on the
# 1000-step DDPM schedule: p = 1 - t / 999.
REFERENCE_TIMESTEPS = (780, 520, 320)
DEFAULT_PERCENTS = tuple(round(1.0 - t / 999.0, 3) for t in REFERENCE_TIMESTEPS)


def gradient_weight(grad: torch.Tensor, mode: str) -> torch.Tensor:
    """|g| for the paper's Abs-Grad-SAM, ReLU(g) for the reference code's Grad-SAM."""
    if mode == "abs":
        return grad.abs()
    if mode == "gradsam":
        return grad.clamp_min(0)
    raise ValueError(f"unknown score mode {mode!r}; choose one of {SCORE_MODES}")


def token_importance(attn: torch.Tensor, grad: torch.Tensor, mode: str = "abs") -> torch.Tensor:
    """sum over heads and the given token columns of A * f(dL/dA): [B, heads, N, S] -> [B, N]."""
    if attn.shape != grad.shape:
        raise ValueError(f"attention {tuple(attn.shape)} and gradient {tuple(grad.shape)} differ")
    return (attn.float() * gradient_weight(grad.float(), mode)).sum(dim=(1, 3))


def periodic_positions(positions: Sequence[int], own_length: int, context_length: int) -> list[int]:
    """Token columns of the prompt's positions once ComfyUI repeats a shorter context to a common length."""
    if own_length <= 0 or context_length % own_length:
        return [p for p in positions if p < context_length]
    return sorted({p + k * own_length for p in positions for k in range(context_length // own_length)})


def upsample_map(tokens: torch.Tensor, grid_hw: tuple[int, int], latent_hw: tuple[int, int]) -> torch.Tensor:
    """[B, N] scores on a layer's token grid -> [B, 1, H, W] at latent size (bilinear, half-pixel centres)."""
    b = tokens.shape[0]
    m = tokens.reshape(b, 1, grid_hw[0], grid_hw[1]).float()
    if tuple(grid_hw) == tuple(latent_hw):
        return m
    return F.interpolate(m, size=tuple(latent_hw), mode="bilinear", align_corners=False)


def aggregate_maps(maps: Sequence[torch.Tensor], eps: float = 1e-12) -> torch.Tensor:
    """Average of per-layer maps, each first divided by its own spatial mean so no layer dominates by scale."""
    if not maps:
        raise ValueError("no importance maps to aggregate")
    if len(maps) == 1:
        return maps[0]
    normed = [m / m.mean(dim=(-2, -1), keepdim=True).clamp_min(eps) for m in maps]
    return torch.stack(normed).mean(dim=0)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's kernel: radius int(truncate * sigma + 0.5), weights exp(-x^2 / 2 sigma^2), sum 1."""
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return k / k.sum()


def _filter_axis(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Correlate along dim with edge replication ("nearest"), for any kernel radius."""
    r = (kernel.numel() - 1) // 2
    n = x.shape[dim]
    idx = torch.arange(-r, n + r, device=x.device).clamp(0, n - 1)
    padded = x.index_select(dim, idx)
    out = torch.zeros_like(x)
    for i, w in enumerate(kernel.tolist()):
        out = out + w * padded.narrow(dim, i, n)
    return out


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter(x[b, c], sigma, mode="nearest", truncate) on every [H, W] slice."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, truncate)
    y = x.double()
    y = _filter_axis(y, k, -2)
    y = _filter_axis(y, k, -1)
    return y.to(x.dtype)


def binary_dilation(mask: torch.Tensor, iterations: int, connectivity: int = 2) -> torch.Tensor:
    """scipy.ndimage.binary_dilation(mask[b, c], generate_binary_structure(2, connectivity), iterations).

    connectivity 2 is the 3x3 square the reference uses, 1 the 4-neighbour cross. Pixels outside the image
    count as False (scipy's border_value=0). iterations <= 0 returns the mask unchanged (scipy would instead
    repeat until nothing changes).
    """
    m = mask.bool()
    if iterations <= 0:
        return m
    lead = m.shape[:-2]
    y = m.reshape(-1, 1, *m.shape[-2:]).float()
    for _ in range(int(iterations)):
        if connectivity >= 2:
            y = F.max_pool2d(y, 3, stride=1, padding=1)
        else:
            p = F.pad(y, (1, 1, 1, 1))
            y = torch.stack([p[..., 1:-1, 1:-1], p[..., :-2, 1:-1], p[..., 2:, 1:-1],
                             p[..., 1:-1, :-2], p[..., 1:-1, 2:]]).amax(dim=0)
    return (y > 0.5).reshape(*lead, *m.shape[-2:])


def threshold(score: torch.Tensor, kappa: float = 0.5, per_channel: bool = True) -> torch.Tensor:
    """score > mean + kappa * std (unbiased std, as torch.std), per [b, c] map or per item over all channels."""
    dims = (-2, -1) if per_channel else tuple(range(1, score.dim()))
    s = score.float()
    mean = s.mean(dim=dims, keepdim=True)
    std = s.std(dim=dims, keepdim=True) if s[0].numel() > 1 else torch.zeros_like(mean)
    return s > mean + kappa * std


def subject_mask(score: torch.Tensor, kappa: float = 0.5, per_channel: bool = True, blur_sigma: float = 1.0,
                 dilation: int = 3, connectivity: int = 2) -> torch.Tensor:
    """The corrected reference pipeline: Gaussian blur, then mean + kappa*std threshold, then binary dilation."""
    return binary_dilation(threshold(gaussian_blur(score, blur_sigma), kappa, per_channel), dilation, connectivity)


def flat_items(score: torch.Tensor) -> torch.Tensor:
    """[B] True where every map of the item is constant (no subject signal at all: nothing to threshold)."""
    flat = score.flatten(2).float()
    return (flat.amax(dim=-1) == flat.amin(dim=-1)).all(dim=1)


def union(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Any subject keeps the element (the reference ORs the per-subject masks)."""
    if not masks:
        raise ValueError("no masks to combine")
    out = masks[0].bool()
    for m in masks[1:]:
        out = out | m.bool()
    return out


def noised_reference(reference: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The reference latent at noise level sigma in ComfyUI's sigma space (x = x0 + sigma * eps)."""
    return reference + noise * float(sigma)


def replace_background(x: torch.Tensor, reference_noised: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Keep x where the subject mask is set, the noised reference everywhere else (exact copies, no blend)."""
    keep = keep.bool().expand_as(x)
    return torch.where(keep, x, reference_noised.to(x.dtype))


def resize_latent(latent: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [B, C, h, w] to hw (used when the reference does not match the sampled size)."""
    if tuple(latent.shape[-2:]) == tuple(hw):
        return latent
    return F.interpolate(latent.float(), size=tuple(hw), mode="bilinear", align_corners=False).to(latent.dtype)


def parse_percents(text: str) -> list[float]:
    """'0.219, 0.479, 0.68' -> sorted unique floats; raises ValueError for anything outside (0, 1)."""
    out: set[float] = set()
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        value = float(part)
        if not (0.0 < value < 1.0) or math.isnan(value):
            raise ValueError(f"step percent {part} is outside (0, 1)")
        out.add(value)
    return sorted(out)


def manipulation_indices(sigmas: Sequence[float], targets: Sequence[float]) -> list[int]:
    """For each target sigma, the first schedule index i >= 1 with sigmas[i] <= target (the step at which the
    run has reached that noise level). Targets above the run's start or below its last non-zero sigma are
    skipped; duplicates collapse. The final sigma (usually 0) is never a manipulation step."""
    s = [float(v) for v in sigmas]
    last = len(s) - 2
    picks: set[int] = set()
    for t in targets:
        t = float(t)
        if last < 1 or t >= s[0]:
            continue
        for i in range(1, last + 1):
            if s[i] <= t:
                picks.add(i)
                break
    return sorted(picks)


def normalize_map(score: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """[B, C, H, W] -> [0, 1] per item, for previews."""
    lo = score.amin(dim=(1, 2, 3), keepdim=True)
    hi = score.amax(dim=(1, 2, 3), keepdim=True)
    return (score - lo) / (hi - lo).clamp_min(eps)
