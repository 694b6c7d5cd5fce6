"""Bench context: the model under test for each topology, with conditioning and a sampling call."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from conduit import testing
from conduit_pack.toyworld import build

from .harness import BenchContext

# CPU: small latents and few steps keep the full SDXL topology affordable; a GPU runs it at 1024².
SETTINGS = {
    ("tiny", "cpu"): ((32, 32), 8, 9),
    ("sdxl_full", "cpu"): ((32, 32), 4, 3),
    ("tiny", "cuda"): ((64, 64), 20, 5),
    ("sdxl_full", "cuda"): ((128, 128), 20, 3),
}


@dataclass
class ModelContext(BenchContext):
    _model: Any = field(default=None, repr=False)

    @property
    def family(self) -> str:
        return "sdxl"

    def model(self):
        if self._model is None:
            name = "sdxl" if self.topology == "tiny" else "sdxl_full"
            self._model = build.build_unet(name, 0, device=self.device)
        return self._model

    def cond(self, batch: int = 1, seed: int = 0):
        name = "sdxl" if self.topology == "tiny" else "sdxl_full"
        h, w = self.latent_hw
        c = build.tiny_conditioning(name, batch, seed, w * 8, h * 8)
        return [[c[0][0].to(self.device), {k: (v.to(self.device) if torch.is_tensor(v) else v)
                                           for k, v in c[0][1].items()}]]

    def sample(self, model, batch: int = 1, cfg: float = 5.0, sampler: str = "euler", steps: int | None = None,
               positive=None, negative=None, seed: int = 0):
        pos = positive if positive is not None else self.cond(batch, 0)
        neg = negative if negative is not None else self.cond(batch, 1)
        return testing.sample(model, pos, neg, latent_hw=self.latent_hw, batch=batch, steps=steps or self.steps,
                              cfg=cfg, sampler=sampler, seed=seed)


def make_context(device: torch.device, host: str, topology: str, quick: bool) -> ModelContext:
    hw, steps, repeats = SETTINGS[(topology, device.type)]
    if quick:
        steps, repeats = 2, 1
    return ModelContext(device, host, topology, hw, steps, repeats, quick)
