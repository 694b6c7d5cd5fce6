"""Tiny SD3 / SD3.5 / Flux ControlNets from ComfyUI's own classes, matched to the tiny DiTs of dit_build.py.

Each builder returns the `comfy.controlnet.ControlNet` object that core ControlNetLoader would give for a real
checkpoint of that type (same wrapper class, latent format, compression ratio and extra conds as
comfy/controlnet.py sets up), around a seeded control model at the tiny DiT's width:
- "sd3": the SD3 ControlNet (`comfy.cldm.mmdit.ControlNet`); its hint is VAE-encoded, so Apply ControlNet
  needs the VAE. It returns {"output": [one residual per joint block]}.
- "sd35": the SD3.5 ControlNet (`comfy.cldm.dit_embedder.ControlNetEmbedder`, `ControlNetSD35`), also latent.
- "flux": the XLabs-style Flux ControlNet (`comfy.ldm.flux.controlnet.ControlNetFlux`) on a pixel hint; it
  returns {"input": double-block residuals, "output": single-block residuals}.
"""
from __future__ import annotations

from typing import Any

import torch

from .build import seeded_init_
from .dit_build import CONFIGS, _model_config

KINDS = ("sd3", "sd35", "flux")


def _ops():
    import comfy.ops

    return comfy.ops.disable_weight_init


def _sd3(seed: int, device: torch.device, blocks: int):
    import comfy.cldm.mmdit
    import comfy.controlnet
    import comfy.latent_formats

    cfg = dict(_model_config("sd3").unet_config)
    cfg.pop("num_blocks", None)
    model = comfy.cldm.mmdit.ControlNet(num_blocks=blocks, control_latent_channels=16, operations=_ops(),
                                        device=device, dtype=torch.float32, **cfg)
    seeded_init_(model, seed)
    with torch.no_grad():
        model.pos_embed.copy_(torch.randn(model.pos_embed.shape, generator=torch.Generator().manual_seed(seed)) * 0.1)
    latent_format = comfy.latent_formats.SD3()
    latent_format.shift_factor = 0  # as comfy/controlnet.py's load_controlnet_mmdit
    return comfy.controlnet.ControlNet(model, compression_ratio=1, latent_format=latent_format, load_device=device,
                                       manual_cast_dtype=None)


def _sd35(seed: int, device: torch.device, blocks: int):
    import comfy.cldm.dit_embedder
    import comfy.controlnet
    import comfy.latent_formats

    cfg = CONFIGS["sd3"]
    heads = int(cfg["depth"])
    model = comfy.cldm.dit_embedder.ControlNetEmbedder(
        img_size=None, patch_size=cfg["patch_size"], in_chans=16, num_layers=blocks,
        main_model_double=cfg["num_blocks"], double_y_emb=False, attention_head_dim=64, num_attention_heads=heads,
        adm_in_channels=cfg["adm_in_channels"], device=device, dtype=torch.float32, operations=_ops())
    seeded_init_(model, seed)
    return comfy.controlnet.ControlNetSD35(model, compression_ratio=1, latent_format=comfy.latent_formats.SD3(),
                                           load_device=device, manual_cast_dtype=None)


def _flux(seed: int, device: torch.device):
    import comfy.controlnet
    import comfy.ldm.flux.controlnet

    cfg = dict(_model_config("flux").unet_config)
    model = comfy.ldm.flux.controlnet.ControlNetFlux(operations=_ops(), device=device, dtype=torch.float32, **cfg)
    seeded_init_(model, seed)
    return comfy.controlnet.ControlNet(model, load_device=device, manual_cast_dtype=None,
                                       extra_conds=["y", "guidance"])


def build_dit_controlnet(kind: str = "flux", seed: int = 0, device: Any = None, blocks: int = 2):
    """A core ControlNet object of the named type for the tiny DiTs ("sd3" and "sd35" fit build_dit("sd3"),
    "flux" fits build_dit("flux")); `blocks` is the control model's own depth (SD3 types)."""
    if kind not in KINDS:
        raise ValueError(f"unknown DiT ControlNet {kind!r}; choose one of {KINDS}")
    device = torch.device(device or "cpu")
    if kind == "sd3":
        return _sd3(seed, device, blocks)
    if kind == "sd35":
        return _sd35(seed, device, blocks)
    return _flux(seed, device)
