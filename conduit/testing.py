"""Helpers for host-tier tests and benchmarks: tiny models, conditioning, and one-call sampling."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from conduit_pack.toyworld import build


@dataclass
class TinyModel:
    family: str
    model: Any  # ModelPatcher

    def cond(self, batch: int = 1, seed: int = 0, width: int = 256, height: int = 256):
        return build.tiny_conditioning(self.family, batch, seed, width, height)


def tiny_model(family: str, seed: int = 0) -> TinyModel:
    return TinyModel(family, build.build_unet(family, seed))


def noise_for(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def sample(model, positive, negative, latent_hw: tuple[int, int] = (32, 32), batch: int = 1, steps: int = 4,
           cfg: float = 5.0, sampler: str = "euler", scheduler: str = "normal", seed: int = 0,
           latent: torch.Tensor | None = None, denoise: float = 1.0, sigmas: torch.Tensor | None = None):
    """comfy.sample.sample with a seeded noise; the KSampler node's own path."""
    import comfy.sample

    shape = (batch, 4, *latent_hw)
    latent = torch.zeros(shape) if latent is None else latent
    noise = noise_for(tuple(latent.shape), seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               denoise=denoise, sigmas=sigmas, seed=seed, disable_pbar=True)


def sample_custom(model, positive, negative, sampler_obj, sigmas: torch.Tensor, latent: torch.Tensor,
                  cfg: float = 5.0, seed: int = 0):
    """comfy.sample.sample_custom: the SamplerCustom node's path, for SAMPLER-type nodes."""
    import comfy.sample

    noise = noise_for(tuple(latent.shape), seed)
    return comfy.sample.sample_custom(model, noise, cfg, sampler_obj, sigmas, positive, negative, latent,
                                      seed=seed, disable_pbar=True)
