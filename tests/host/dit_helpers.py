"""Shared pieces of the DiT host tests: the skip marker, tiny models, conditioning and a sampling call."""
from __future__ import annotations

import pytest
import torch

import conduit  # noqa: F401  (registers conduit_pack)
from conduit_pack.toyworld import dit_build

OK, WHY = dit_build.dit_available()
needs_dit = pytest.mark.skipif(not OK, reason=WHY or "DiT classes available")
CFG = {"sd3": 3.0, "flux": 1.0}  # Flux is guidance-distilled: cfg 1 with FluxGuidance in the cond


def conds(name: str, seed: int = 0):
    return dit_build.dit_conditioning(name, 1, seed), dit_build.dit_conditioning(name, 1, seed + 1)


def sample(model, pos, neg, name: str, hw=(8, 12), steps: int = 4, seed: int = 0, sampler: str = "euler",
           scheduler: str = "simple", cfg: float | None = None) -> torch.Tensor:
    import comfy.sample

    latent = torch.zeros(1, dit_build.LATENT_CHANNELS, *hw)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, steps, CFG[name] if cfg is None else cfg, sampler, scheduler, pos, neg,
                               latent, seed=seed, disable_pbar=True)


def slg(model, layers: str = "1", scale: float = 3.0):
    """Core SkipLayerGuidanceDiT on the model (double/joint blocks `layers`)."""
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    return SkipLayerGuidanceDiT.execute(model, scale, 0.0, 1.0, layers, "", 0.0).args[0]
