"""Generate toy-world images through ComfyUI's own paths (CLIP encode, comfy.sample, VAE decode).

Needs a ComfyUI host imported first (eval/__main__.py and the host tests do that).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

LATENT_HW = (8, 8)  # 64x64 images
STEPS = 20
CFG = 4.0
SAMPLER = "euler"
SCHEDULER = "normal"


@dataclass
class Toy:
    model: Any  # ModelPatcher
    clip: Any
    vae: Any
    _cond_cache: dict = field(default_factory=dict)

    def cond(self, text: str):
        """CLIPTextEncode's output for this text."""
        if text not in self._cond_cache:
            with torch.no_grad():
                tokens = self.clip.tokenize(text)
                cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
            self._cond_cache[text] = [[cond, {"pooled_output": pooled}]]
        return self._cond_cache[text]

    def sample(self, text: str, seed: int = 0, batch: int = 1, model=None, negative: str = "",
               steps: int = STEPS, cfg: float = CFG, sampler: str = SAMPLER, scheduler: str = SCHEDULER,
               latent: torch.Tensor | None = None, denoise: float = 1.0) -> torch.Tensor:
        """Latents [batch, 4, 8, 8] from the KSampler path (seeded noise, as the KSampler node draws it)."""
        from conduit import testing

        return testing.sample(model or self.model, self.cond(text), self.cond(negative), latent_hw=LATENT_HW,
                              batch=batch, steps=steps, cfg=cfg, sampler=sampler, scheduler=scheduler, seed=seed,
                              latent=latent, denoise=denoise)

    def decode(self, latent: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.vae.decode(latent).float().clamp(0, 1).numpy()

    def encode(self, images: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.encode(torch.as_tensor(images, dtype=torch.float32)[..., :3])

    def round_trip(self, images: np.ndarray) -> np.ndarray:
        """Images [B, 64, 64, 3] in [0, 1] encoded and decoded by the toy VAE: the best any UNet can give."""
        return self.decode(self.encode(images))

    def generate(self, text: str, seed: int = 0, batch: int = 1, **kw) -> np.ndarray:
        """Images [batch, 64, 64, 3] in [0, 1]."""
        return self.decode(self.sample(text, seed, batch, **kw))


@functools.lru_cache(maxsize=2)
def load_toy(random_unet_seed: int | None = None) -> Toy:
    """The trained toy model; with random_unet_seed, the same CLIP/VAE around a random-weight UNet."""
    from conduit_pack.toyworld import build
    from conduit_pack.toyworld import demo_model as toy

    bundle = toy.load_toy_bundle()
    model = bundle.model if random_unet_seed is None else build.build_unet(toy.FAMILY, random_unet_seed)
    return Toy(model, bundle.clip, bundle.vae)
