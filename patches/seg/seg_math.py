"""Smoothed Energy Guidance math (pure torch): query blur over a layer's token grid, and the guidance step.

Blur recipe of the official SEG code: a 1-D Gaussian with k taps, k = smallest odd integer >= ceil(6*sigma),
taps at integer offsets -(k-1)/2 .. (k-1)/2, normalised to sum 1, applied along both grid axes with reflect
padding of k//2. Two deliberate differences:
- k is capped per axis (side if odd, side+1 if even). The official code is square-only; the ComfyUI port caps
  both axes by the last one, so a wide grid with a large sigma asks for more reflect padding than the short
  side has and crashes. The per-axis cap always keeps the pad below the side (pad <= side//2 < side), so
  reflect padding is defined on every grid, including 1 x N and 2 x N: a 1-wide axis gets a single tap,
  i.e. that axis is left as it is.
- sigma = 0 is the identity (the recipe's 0/0 would be NaN); a negative, infinite or > 9999 sigma (the
  official threshold) is the spatial mean.
Each axis is one precomputed side x side "reflect Toeplitz" matrix, so the blur is two small matmuls
(M_h @ Q @ M_w^T per channel), equal to the dense k x k reflect-padded convolution.
"""
from __future__ import annotations

import math

import torch

INFINITE_THRESHOLD = 9999.0  # official code: sigma above this means "infinite blur"
_CACHE: dict[tuple, torch.Tensor] = {}
_CACHE_LIMIT = 256


def is_infinite(sigma: float) -> bool:
    return sigma < 0 or math.isinf(sigma) or sigma > INFINITE_THRESHOLD


def is_identity(sigma: float) -> bool:
    return sigma == 0


def kernel_size(sigma: float) -> int:
    """Smallest odd integer >= ceil(6*sigma) (1 for sigma = 0)."""
    if is_infinite(sigma) or math.isnan(sigma):
        raise ValueError(f"kernel_size needs a finite sigma >= 0, got {sigma}")
    c = math.ceil(6 * sigma)
    return c + 1 - (c % 2)


def axis_kernel_size(sigma: float, side: int) -> int:
    """Kernel size along an axis of `side` tokens: capped at side (odd) or side + 1 (even)."""
    if side < 1:
        raise ValueError(f"grid side must be >= 1, got {side}")
    return min(kernel_size(sigma), side if side % 2 else side + 1)


def gaussian_taps(k: int, sigma: float) -> torch.Tensor:
    """k normalised Gaussian weights at integer offsets centred on 0 (float64)."""
    if sigma == 0:
        return torch.ones(1, dtype=torch.float64)
    half = (k - 1) / 2
    x = torch.linspace(-half, half, k, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def reflect(i: int, n: int) -> int:
    """Index of position i in a reflect-padded axis of length n (edge not repeated), valid for -n < i < 2n-1."""
    if n == 1:
        return 0
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


def blur_matrix(side: int, sigma: float) -> torch.Tensor:
    """[side, side] float64 M with (M @ x) = reflect-padded 1-D Gaussian blur of x along that axis."""
    k = axis_kernel_size(sigma, side)
    g = gaussian_taps(k, sigma)
    pad = k // 2
    m = torch.zeros(side, side, dtype=torch.float64)
    for i in range(side):
        for t in range(k):
            m[i, reflect(i + t - pad, side)] += g[t]
    return m


def cached_blur_matrix(side: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (side, float(sigma), dtype, str(device))
    m = _CACHE.get(key)
    if m is None:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        m = blur_matrix(side, sigma).to(device=device, dtype=dtype)
        _CACHE[key] = m
    return m


def blur_tokens(q: torch.Tensor, hw: tuple[int, int], sigma: float) -> torch.Tensor:
    """Blur q [B, N, C] (tokens row-major over an h x w grid) along both grid axes, channels independent."""
    h, w = hw
    b, n, c = q.shape
    if n != h * w:
        raise ValueError(f"{n} tokens do not fill a {h}x{w} grid")
    if is_infinite(sigma):
        return q.mean(dim=1, keepdim=True).expand(b, n, c)
    if is_identity(sigma):
        return q
    mh = cached_blur_matrix(h, sigma, q.dtype, q.device)
    mw = cached_blur_matrix(w, sigma, q.dtype, q.device)
    x = torch.matmul(mw, q.reshape(b, h, w, c))  # along w: [w,w] @ [b,h,w,c]
    x = torch.matmul(mh, x.reshape(b, h, w * c))  # along h: [h,h] @ [b,h,w*c]
    return x.reshape(b, n, c)


def blur_grid(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Same blur on a [B, C, H, W] map."""
    b, c, h, w = x.shape
    t = x.reshape(b, c, h * w).transpose(1, 2)
    return blur_tokens(t, (h, w), sigma).transpose(1, 2).reshape(b, c, h, w)


def mean_query(q: torch.Tensor) -> torch.Tensor:
    """[B, N, C] -> [B, 1, C]: the single query every token has under infinite blur."""
    return q.mean(dim=1, keepdim=True)


def guide(denoised: torch.Tensor, cond: torch.Tensor, blurred: torch.Tensor, scale: float) -> torch.Tensor:
    """denoised (= uncond + cfg*(cond - uncond), or cond at cfg 1) + scale * (cond - blurred)."""
    return denoised + scale * (cond - blurred)


def rescale(x: torch.Tensor, cond: torch.Tensor, guided: torch.Tensor, amount: float) -> torch.Tensor:
    """Guidance rescale of Lin et al. (as the official SEG pipeline's guidance_rescale), on x0 predictions.

    In noise space e = (x - x0) / sigma; the rescaled noise is amount * e_g * std(e_c)/std(e_g)
    + (1 - amount) * e_g, with stds per image over all other dims. sigma cancels in the ratio, so it is done
    on x - x0 directly. amount = 0 returns guided untouched.
    """
    if amount == 0:
        return guided
    e_g = x - guided
    e_c = x - cond
    dims = list(range(1, x.dim()))
    ratio = e_c.std(dim=dims, keepdim=True) / e_g.std(dim=dims, keepdim=True).clamp_min(1e-12)
    e = e_g * (amount * ratio + (1.0 - amount))
    return x - e
