"""Recover the 2-D token grid of an attention layer from the latent shape (pure torch/math)."""
from __future__ import annotations

import math


def token_grid(latent_hw: tuple[int, int], n_tokens: int) -> tuple[int, int]:
    """(h, w) of a layer's feature map whose flattened size is n_tokens, for a latent of size latent_hw.

    UNet down-sampling halves each side with ceil (stride-2 conv with padding 1), so any aspect ratio and
    sizes that are not multiples of 64 are handled by walking the down-sampling chain until h*w matches.
    """
    h, w = int(latent_hw[0]), int(latent_hw[1])
    if h <= 0 or w <= 0 or n_tokens <= 0:
        raise ValueError(f"bad grid request: latent {latent_hw}, tokens {n_tokens}")
    for _ in range(16):
        if h * w == n_tokens:
            return h, w
        if h * w < n_tokens:
            break
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    raise ValueError(f"no down-sampled grid of latent {h}x{w} has {n_tokens} tokens")


def tokens_to_grid(x, hw: tuple[int, int]):
    """[B, N, C] -> [B, C, h, w]."""
    b, n, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1])


def grid_to_tokens(x):
    """[B, C, h, w] -> [B, N, C]."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).transpose(1, 2)
