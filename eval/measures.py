"""Exact image measures for the toy world (no pretrained networks): foreground, palette, texture, PSNR/SSIM, FD.

Images are float arrays [H, W, 3] in [0, 1] (ComfyUI's IMAGE layout, one image) unless said otherwise.
"""
from __future__ import annotations

import numpy as np

from conduit_pack.toyworld import world

PALETTE = {name: np.array(rgb, np.float32) / 255.0 for name, rgb in world.COLORS.items()}
BACKDROPS = {name: np.array(rgb, np.float32) / 255.0 for name, rgb in world.BACKGROUNDS.items()}


def border_color(img: np.ndarray, width: int = 3) -> np.ndarray:
    """Median colour of the image border: the background, since shapes keep a margin."""
    edge = np.concatenate([img[:width].reshape(-1, 3), img[-width:].reshape(-1, 3),
                           img[:, :width].reshape(-1, 3), img[:, -width:].reshape(-1, 3)])
    return np.median(edge, axis=0)


def saturation(img: np.ndarray) -> np.ndarray:
    """(max - min) / max per pixel: palette colours (and their dark tone) are above 0.7, every background of
    the v2 world at most world.MAX_BG_SATURATION."""
    mx, mn = img.max(axis=-1), img.min(axis=-1)
    return (mx - mn) / np.maximum(mx, 1e-3)


def foreground(img: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The subject as a bool mask: saturated, not too dark pixels (works on plain and scene backgrounds)."""
    return (saturation(img) > threshold) & (img.max(axis=-1) > 0.08)


def chroma(rgb: np.ndarray) -> np.ndarray:
    """Brightness-free colour (r, g, b) / (r + g + b): the darker texture tone keeps the same chroma."""
    return rgb / np.maximum(rgb.sum(axis=-1, keepdims=True), 1e-3)


def subject_color(img: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The subject's base colour: median of its brighter half (the texture's dark tone is the other half)."""
    mask = foreground(img) if mask is None else mask
    px = img[mask]
    if len(px) < 8:
        return np.full(3, np.nan, np.float32)
    lum = px.mean(axis=1)
    return np.median(px[lum >= np.median(lum)], axis=0)


def palette_distance(img: np.ndarray, color: str, mask: np.ndarray | None = None) -> float:
    """Chroma distance between the subject's colour and the asked-for palette colour (0 = exact)."""
    c = subject_color(img, mask)
    if np.isnan(c).any():
        return float("nan")
    return float(np.linalg.norm(chroma(c) - chroma(PALETTE[color])))


def nearest_palette(img: np.ndarray, mask: np.ndarray | None = None) -> str:
    c = subject_color(img, mask)
    if np.isnan(c).any():
        return "none"
    return min(PALETTE, key=lambda n: np.linalg.norm(chroma(c) - chroma(PALETTE[n]))
               + 0.3 * np.abs(c - PALETTE[n]).mean())


def texture_signature(img: np.ndarray, mask: np.ndarray | None = None, bands: int = 8) -> np.ndarray:
    """Normalised radial power spectrum of the subject's luminance (mean removed, outside set to its mean).

    Stripes, dots, checks and speckles put their energy at different radii: solid has almost none.
    """
    mask = foreground(img) if mask is None else mask
    lum = img.mean(axis=-1)
    if mask.sum() < 8:
        return np.zeros(bands, np.float32)
    inside = lum[mask]
    field = np.where(mask, lum - inside.mean(), 0.0)
    power = np.abs(np.fft.fftshift(np.fft.fft2(field))) ** 2
    h, w = lum.shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - h // 2, xx - w // 2) / (min(h, w) / 2)
    edges = np.linspace(0.0, 1.0, bands + 1)
    sig = np.array([power[(r >= a) & (r < b)].sum() for a, b in zip(edges[:-1], edges[1:])], np.float64)
    return (sig / max(float(mask.sum()), 1.0)).astype(np.float32)


def texture_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between two images' texture signatures (log power, so contrast matters less than frequency)."""
    sa, sb = np.log1p(100 * texture_signature(a)), np.log1p(100 * texture_signature(b))
    return float(np.linalg.norm(sa - sb))


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    diff = (a - b) ** 2
    mse = diff[region].mean() if region is not None else diff.mean()
    return float(10 * np.log10(1.0 / max(mse, 1e-10)))


def _blur(x: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    radius = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, ((radius, radius), (radius, radius)), mode="reflect")
    tmp = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 1, pad)
    return np.apply_along_axis(lambda c: np.convolve(c, k, mode="valid"), 0, tmp)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM on luminance (Gaussian window sigma 1.5, the usual constants)."""
    x, y = a.mean(axis=-1), b.mean(axis=-1)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = _blur(x), _blur(y)
    vx, vy = _blur(x * x) - mx * mx, _blur(y * y) - my * my
    cxy = _blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    m = ssim_map(a, b)
    return float(m[region].mean() if region is not None else m.mean())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID formula on two feature sets [N, D]."""
    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
