"""ToyNet: a small CNN trained on procedural toy-world images; reads shape, colour, texture and background.

Its pooled features are the feature space of the toy Fréchet distance (an FID stand-in).
Train with `python -m eval train-classifier` (seeded; 1500 + 1500 steps, about 10 minutes on one free CPU
core); the weights are committed as eval/weights/toynet.safetensors.

It reads images at full resolution and learns half of every batch from the toy VAE's round trip of the
procedural images (`train(roundtrip=...)`): every generated image reaches it through that VAE, and a reader
that only knew clean pictures took the VAE's small artefacts on a solid shape for speckles (measured:
docs/toy_world.md, Quality). Retrain it whenever the toy VAE changes.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from conduit_pack.toyworld import world

log = logging.getLogger(__name__)

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "toynet.safetensors")
INPUT = 64  # full resolution: at half resolution 12 px checks and 8 px speckles blurred into each other
ROUNDTRIP_BANK = 4096  # VAE round trips made once per training run, half of every batch is drawn from them
HEADS = {"shape": list(world.SHAPES), "color": list(world.COLORS), "texture": list(world.TEXTURES),
         "background": list(world.ALL_BACKGROUNDS)}  # v2: the four plain colours and the four scene kinds


class ToyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        chans = [3, 32, 32, 64, 64, 128]
        layers = []
        for a, b in zip(chans[:-1], chans[1:]):
            # the first layer reads every pixel (the textures' edges), the others halve the grid: 64 -> 4
            layers += [nn.Conv2d(a, b, 3, stride=1 if a == 3 else 2, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({k: nn.Linear(128, len(v)) for k, v in HEADS.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] in [0, 1] -> [B, 128]."""
        return self.body(x * 2 - 1).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {k: head(f) for k, head in self.heads.items()}


def to_nchw(images) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, 3] (tensor or array) -> [B, 3, INPUT, INPUT] float (area down-sampling)."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32)) if not torch.is_tensor(images) else images.float()
    x = x.permute(0, 3, 1, 2)
    if x.shape[-2:] != (INPUT, INPUT):
        x = F.interpolate(x, size=(INPUT, INPUT), mode="area")
    return x


def load(path: str | None = None) -> ToyNet:
    from safetensors.torch import load_file

    path = path or WEIGHTS
    net = ToyNet()
    net.load_state_dict(load_file(path))
    net.eval()
    return net


@torch.no_grad()
def predict(net: ToyNet, images) -> tuple[dict[str, list[str]], np.ndarray]:
    """Labels per head and features [B, 128] for ComfyUI images [B, H, W, 3]."""
    x = to_nchw(images)
    feats, labels = [], {k: [] for k in HEADS}
    for i in range(0, len(x), 128):
        f = net.features(x[i:i + 128])
        feats.append(f)
        for k, head in net.heads.items():
            labels[k] += [HEADS[k][j] for j in head(f).argmax(1).tolist()]
    return labels, torch.cat(feats).numpy()


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur and noise like a small VAE's reconstructions, so generated images are read like real ones."""
    b = x.shape[0]
    sigma = torch.rand(b, generator=gen) * 0.8
    out = []
    for i in range(b):
        s = float(sigma[i])
        xi = x[i:i + 1]
        if s > 0.2:
            r = 3
            k = torch.exp(-0.5 * (torch.arange(-r, r + 1).float() / s) ** 2)
            k = k / k.sum()
            xi = F.conv2d(F.pad(xi, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
            xi = F.conv2d(F.pad(xi, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
        out.append(xi)
    x = torch.cat(out)
    x = x + torch.randn(x.shape, generator=gen) * (torch.rand(b, 1, 1, 1, generator=gen) * 0.05)
    return x.clamp(0, 1)


Roundtrip = Callable[[np.ndarray], np.ndarray]  # images [B, H, W, 3] in [0, 1] -> the same through a VAE


def round_trip(roundtrip: Roundtrip, images: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Images [B, H, W, 3] through the VAE in chunks, so a large bank never holds one huge activation."""
    return np.concatenate([roundtrip(images[i:i + chunk]) for i in range(0, len(images), chunk)])


def roundtrip_bank(roundtrip: Roundtrip, count: int, seed: int) -> tuple[list[world.Sample], torch.Tensor]:
    """Procedural samples (their own stream) and their VAE round trips as reader inputs [count, 3, H, W]."""
    samples = world.batch(0, count, seed + 7, "all")
    return samples, to_nchw(round_trip(roundtrip, np.stack([s.image for s in samples]) / 255.0))


def train(steps: int = 600, batch: int = 64, seed: int = 1234, path: str | None = None,
          resume_from: str | None = None, max_lr: float = 2e-3, first_batch: int = 0,
          roundtrip: Roundtrip | None = None) -> dict[str, float]:
    """Seeded training on fresh procedural batches; resume_from continues from saved weights (a second round).
    With roundtrip, half of every batch is drawn from a bank of VAE round trips made once at the start."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + first_batch)
    net = load(resume_from).train() if resume_from else ToyNet()
    opt = torch.optim.AdamW(net.parameters(), lr=max_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps, pct_start=0.1)
    bank = roundtrip_bank(roundtrip, ROUNDTRIP_BANK, seed + first_batch) if roundtrip else None
    bar = tqdm(range(steps), desc="toynet", mininterval=10.0, file=sys.stderr)
    for step in bar:
        fresh = batch // 2 if bank else batch
        samples = world.batch((first_batch + step) * batch, fresh, seed, "all")
        x = augment(to_nchw(np.stack([s.image for s in samples]) / 255.0), gen)
        if bank:
            pick = torch.randint(len(bank[0]), (batch - fresh,), generator=gen)
            samples = samples + [bank[0][i] for i in pick.tolist()]
            x = torch.cat([x, bank[1][pick]])
        out = net(x)
        loss = sum(F.cross_entropy(out[k], torch.tensor([HEADS[k].index(getattr(s.spec, k)) for s in samples]))
                   for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()
    acc = accuracy_on_procedural(net, 512, seed + 1)
    if roundtrip:
        acc.update({f"roundtrip_{k}": v for k, v in accuracy_on_procedural(net, 512, seed + 1, roundtrip).items()})
    path = path or WEIGHTS
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return acc


def accuracy_on_procedural(net: ToyNet, count: int = 512, seed: int = 99,
                           roundtrip: Roundtrip | None = None) -> dict[str, float]:
    """ToyNet's accuracy per head on fresh procedural images (or on their round trips through a VAE)."""
    samples = world.batch(0, count, seed, "all")
    images = np.stack([s.image for s in samples]) / 255.0
    if roundtrip:
        images = round_trip(roundtrip, images)
    labels, _ = predict(net, images)
    return {k: float(np.mean([a == getattr(s.spec, k) for a, s in zip(labels[k], samples)])) for k in HEADS}
