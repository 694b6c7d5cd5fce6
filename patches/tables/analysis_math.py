"""Sensitivity grading (pure torch): diagonal-Gaussian JSD between images, within/between-group ratio.

Each image contributes, per (timestep, layer, feature), the token mean mu and std sigma of that feature's
channels (cond and uncond passes concatenated, as in Conditional Balance). Two images a, b are compared
as diagonal Gaussians with the reference code's midpoint M = N((mu_a+mu_b)/2, (sigma_a²+sigma_b²)/2):

    JSD(a, b) = ½·[KL(Pa||M) + KL(Pb||M)]          summed over channels
              = ¼·sum_d [ (mu_a-mu_b)²/(sigma_a²+sigma_b²) + 2·ln sigma_M² - ln sigma_a² - ln sigma_b² ]

score = mean JSD over same-group pairs / mean JSD over different-group pairs (1 when both are 0).
Pairs come from explicit group labels, which fixes the reference's overlapping same-style windows.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch

STD_EPS = 1e-5  # sigma = sqrt(unbiased var + 1e-5), as in the reference statistics
FEATURES = ("q", "k", "v")
KINDS = 2  # slot 0 = uncond pass, slot 1 = cond pass (reference order: uncond then cond)


def parse_groups(text: str) -> list[list[str]]:
    """One group per non-empty line; several prompts of one group are separated by '|'; '#' starts a comment line."""
    groups = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        prompts = [p.strip() for p in line.split("|") if p.strip()]
        if prompts:
            groups.append(prompts)
    return groups


def token_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, N, C] -> (mean [B, C], std [B, C]) over the token axis; std = sqrt(unbiased var + eps)."""
    x = x.float()
    n = x.shape[1]
    var = x.var(dim=1, unbiased=True) if n > 1 else torch.zeros_like(x[:, 0])
    return x.mean(dim=1), (var + STD_EPS).sqrt()


def gaussian_jsd(mu_a: torch.Tensor, sd_a: torch.Tensor, mu_b: torch.Tensor, sd_b: torch.Tensor) -> torch.Tensor:
    """JSD of diagonal Gaussians (averaged-variance midpoint), summed over the last axis; broadcasts."""
    va, vb = sd_a.double() ** 2, sd_b.double() ** 2
    s = va + vb
    dmu = mu_a.double() - mu_b.double()
    terms = dmu * dmu / s + 2.0 * torch.log(s / 2.0) - torch.log(va) - torch.log(vb)
    return 0.25 * terms.sum(dim=-1)


def pairwise_jsd(mu: torch.Tensor, sd: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """[M, D] stats -> [M, M] symmetric JSD matrix (rows computed in chunks to bound memory)."""
    m = mu.shape[0]
    out = torch.zeros(m, m, dtype=torch.float64, device=mu.device)
    for start in range(0, m, chunk):
        stop = min(m, start + chunk)
        out[start:stop] = gaussian_jsd(mu[start:stop, None], sd[start:stop, None], mu[None], sd[None])
    return out


def group_pair_masks(groups: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper-triangle masks (i < j) of same-group and different-group image pairs."""
    g = torch.as_tensor(list(groups))
    upper = torch.triu(torch.ones(len(g), len(g), dtype=torch.bool), diagonal=1)
    same = (g[:, None] == g[None, :]) & upper
    return same, upper & ~same


def check_groups(groups: Sequence[int]) -> str | None:
    """Why these group labels cannot be graded, or None when they can."""
    labels = list(groups)
    distinct = set(labels)
    if len(distinct) < 2:
        return f"need at least 2 groups to compare, got {len(distinct)}"
    if all(labels.count(g) < 2 for g in distinct):
        return "need at least one group with 2 or more images (samples per group >= 2)"
    return None


def ratio_score(dist: torch.Tensor, same: torch.Tensor, diff: torch.Tensor) -> float:
    """Mean within-group distance / mean between-group distance; 1.0 when both are zero."""
    intra = float(dist[same].mean()) if bool(same.any()) else 0.0
    inter = float(dist[diff].mean()) if bool(diff.any()) else 0.0
    if inter <= 0.0:
        return 1.0
    return intra / inter


def layer_scores(mu: torch.Tensor, sd: torch.Tensor, offsets: Sequence[tuple[int, int]],
                 groups: Sequence[int]) -> torch.Tensor:
    """mu, sd [M, K, D] (K recorded passes, D all layers' channels) -> [L] scores, one per channel slice."""
    same, diff = group_pair_masks(groups)
    m = mu.shape[0]
    out = torch.empty(len(offsets), dtype=torch.float64)
    for li, (a, b) in enumerate(offsets):
        dist = pairwise_jsd(mu[:, :, a:b].reshape(m, -1), sd[:, :, a:b].reshape(m, -1))
        out[li] = ratio_score(dist.cpu(), same, diff)
    return out


def channel_offsets(channels: Sequence[int]) -> list[tuple[int, int]]:
    """[(start, stop)] of each layer's channels in the concatenated D axis."""
    out, start = [], 0
    for c in channels:
        out.append((start, start + int(c)))
        start += int(c)
    return out


def merge_duplicate_timesteps(timesteps: Sequence[int], scores: dict[str, torch.Tensor]
                              ) -> tuple[list[int], dict[str, torch.Tensor]]:
    """Average rows whose steps round to the same model timestep (tables need unique timesteps)."""
    unique: list[int] = []
    for t in timesteps:
        if t not in unique:
            unique.append(int(t))
    if len(unique) == len(timesteps):
        return list(map(int, timesteps)), scores
    merged = {}
    for f, s in scores.items():
        merged[f] = torch.stack([s[[i for i, t in enumerate(timesteps) if t == u]].mean(dim=0) for u in unique])
    return unique, merged


def trimmed_mean(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Mean after dropping the min and the max along dim (the reference's way of combining experiments);
    a plain mean for fewer than 3 values."""
    n = values.shape[dim]
    if n < 3:
        return values.mean(dim=dim)
    s = torch.sort(values, dim=dim).values
    return s.narrow(dim, 1, n - 2).mean(dim=dim)


@dataclass
class StoreShape:
    images: int
    steps: int
    channels: int  # D: sum of every layer's channels

    @property
    def numel(self) -> int:
        return self.images * self.steps * len(FEATURES) * KINDS * 2 * self.channels


class StatsStore:
    """Per-image, per-step token statistics: [images, steps, feature, pass, (mu, sigma), D] float32.

    Memory grows with images × steps × channels, never with tokens. Above `disk_over_bytes` it lives
    in a temporary memory-mapped file that is removed on close().
    """

    def __init__(self, shape: StoreShape, disk_over_bytes: int = 1 << 30) -> None:
        self.shape = shape
        dims = (shape.images, shape.steps, len(FEATURES), KINDS, 2, shape.channels)
        self._path: str | None = None
        if shape.numel * 4 > disk_over_bytes:
            import numpy as np

            fd, self._path = tempfile.mkstemp(prefix="conduit_stats_", suffix=".f32")
            os.close(fd)
            self._mm = np.memmap(self._path, dtype=np.float32, mode="w+", shape=dims)
            self.data = torch.from_numpy(self._mm)
        else:
            self.data = torch.zeros(dims, dtype=torch.float32)
        self.recorded = torch.zeros(shape.images, shape.steps, KINDS, dtype=torch.bool)

    def write_run(self, images: Sequence[int], buf: torch.Tensor, seen: torch.Tensor) -> None:
        """Copy one sampling run's buffer [B, steps, F, K, 2, D] (any device) into the store."""
        buf = buf.detach().to("cpu", torch.float32)
        for b, image in enumerate(images):
            self.data[image] = buf[b]
            self.recorded[image] |= seen.cpu()

    def close(self) -> None:
        if self._path is not None:
            del self.data
            self._mm._mmap.close()  # type: ignore[attr-defined]
            os.unlink(self._path)
            self._path = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass


def grade_store(store: StatsStore, groups: Sequence[int], channels: Sequence[int],
                features: Sequence[str] = FEATURES, progress=None, device: torch.device | None = None
                ) -> dict[str, torch.Tensor]:
    """scores[feature] [steps, layers] from a filled store; steps nobody recorded are graded as NaN."""
    offsets = channel_offsets(channels)
    steps = store.shape.steps
    out = {f: torch.full((steps, len(offsets)), math.nan, dtype=torch.float64) for f in features}
    for s in range(steps):
        # only passes present for every image (e.g. cfg = 1 runs have no uncond pass)
        kinds = [k for k in range(KINDS) if bool(store.recorded[:, s, k].all())]
        if kinds:
            block = store.data[:, s]
            if device is not None:
                block = block.to(device)
            for f in features:
                fi = FEATURES.index(f)
                mu = block[:, fi, kinds, 0]
                sd = block[:, fi, kinds, 1]
                out[f][s] = layer_scores(mu, sd, offsets, groups)
        if progress is not None:
            progress(1)
    return out
