"""Build small SD3 (MMDiT) and Flux models from ComfyUI's own classes, and their full-size topologies.

The tiny models are what the DiT tests run on: ComfyUI's real `model_base.SD3` / `model_base.Flux`, with the
same block code, RoPE, joint text/image sequences and hooks as the full models, only narrower and shallower.
Weights are seeded, so a test run is deterministic. The full-size configs are for meta-device FLOP counts.

The pinned 2024 host has no SD3/Flux model classes with block replaces; callers check `dit_available()`.
"""
from __future__ import annotations

from typing import Any

import torch

from .build import seeded_init_

# MMDiT fixes head size 64 and heads = depth: depth 2 is width 128, 2 heads. num_blocks is the joint-block count.
SD3_TINY = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "num_blocks": 4,
    "adm_in_channels": 64, "context_embedder_config": {"target": "torch.nn.Linear",
                                                       "params": {"in_features": 64, "out_features": 128}},
    "pos_embed_max_size": 32, "num_patches": 32 * 32, "pos_embed_scaling_factor": None, "qk_norm": "rms",
}
# SD3.5-Large's 38 joint blocks at the narrowest width (1 head of 64): the shipped table's key set.
SD35L_KEYS = {**SD3_TINY, "depth": 1, "num_blocks": 38,
              "context_embedder_config": {"target": "torch.nn.Linear",
                                          "params": {"in_features": 64, "out_features": 64}}}
SD35L_FULL = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 38, "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 2432}},
    "pos_embed_max_size": 192, "num_patches": 36864, "pos_embed_scaling_factor": None, "qk_norm": "rms",
}
# Flux: width 64, 2 heads of 32 (RoPE axes 8+12+12), 2 double and 2 single blocks.
# Text and pooled widths (64) are those of build.build_clip("sd15"), so CLIPTextEncode feeds the tiny DiTs.
FLUX_TINY = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 64, "context_in_dim": 64,
    "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
    "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}
FLUX_DEV_FULL = {
    **FLUX_TINY, "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072, "num_heads": 24, "depth": 19,
    "depth_single_blocks": 38, "axes_dim": [16, 56, 56],
}
CONFIGS = {"sd3": SD3_TINY, "sd35l_keys": SD35L_KEYS, "sd35l_full": SD35L_FULL, "flux": FLUX_TINY,
           "flux_dev_full": FLUX_DEV_FULL}
# (context width, pooled width); the tiny ones match the tiny SD1.5-shaped text encoder (width 64, pooled 64)
CONTEXT = {"sd3": (64, 64), "sd35l_keys": (64, 64), "sd35l_full": (4096, 2048), "flux": (64, 64),
           "flux_dev_full": (4096, 768)}
LATENT_CHANNELS = 16


def dit_available() -> tuple[bool, str]:
    """(True, "") when this ComfyUI has the SD3 and Flux classes with `patches_replace["dit"]` hooks."""
    try:
        import inspect

        import comfy.ldm.flux.model as flux_model
        import comfy.supported_models as sm
    except ImportError as exc:
        return False, f"this ComfyUI has no Flux model code ({exc})"
    if not hasattr(sm, "SD3") or not hasattr(sm, "Flux"):
        return False, "this ComfyUI has no SD3 or Flux model classes"
    if '"dit"' not in inspect.getsource(flux_model.Flux.forward_orig):
        return False, "this ComfyUI's Flux has no patches_replace['dit'] block hooks"
    return True, ""


def _model_config(name: str):
    import comfy.supported_models as sm

    cfg = dict(CONFIGS[name])
    return sm.Flux(cfg) if cfg.get("image_model") == "flux" else sm.SD3(cfg)


def _seed_buffers_(module: torch.nn.Module, seed: int) -> None:
    """MMDiT's position embedding is a buffer made with torch.empty (a checkpoint fills it); seed it."""
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name.endswith("pos_embed") and buf.is_floating_point():
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)


def build_dit(name: str = "flux", seed: int = 0, device: Any = None, dtype: torch.dtype | None = None):
    """A ModelPatcher around ComfyUI's SD3 or Flux BaseModel with the named topology; device "meta" builds an
    unallocated full-size model for FLOP counts."""
    import comfy.model_patcher

    if name not in CONFIGS:
        raise ValueError(f"unknown DiT topology {name!r}; choose one of {sorted(CONFIGS)}")
    ok, why = dit_available()
    if not ok:
        raise RuntimeError(why)
    device = torch.device(device or "cpu")
    mc = _model_config(name)
    if dtype is not None:
        mc.set_inference_dtype(dtype, None)
    if device.type == "meta":
        with torch.device("meta"):
            model = mc.get_model({}, "", device=device)
    else:
        model = mc.get_model({}, "", device=device)
        seeded_init_(model.diffusion_model, seed)
        _seed_buffers_(model.diffusion_model, seed)
        model.diffusion_model.to(device)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def dit_conditioning(name: str, batch: int = 1, seed: int = 0, tokens: int = 8, guidance: float | None = 3.5):
    """Random conditioning of the right shape (context tokens, pooled vector, Flux guidance)."""
    gen = torch.Generator().manual_seed(seed)
    width, pooled = CONTEXT[name]
    extra: dict = {"pooled_output": torch.randn(batch, pooled, generator=gen)}
    if CONFIGS[name].get("image_model") == "flux" and guidance is not None:
        extra["guidance"] = guidance
    return [[torch.randn(batch, tokens, width, generator=gen), extra]]


def build_dit_vae(seed: int = 0):
    """A comfy.sd.VAE with 16 latent channels (SD3/Flux latents), the tiny KL autoencoder otherwise."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from .build import TINY_VAE_DDCONFIG

    ddconfig = {**TINY_VAE_DDCONFIG, "z_channels": LATENT_CHANNELS}
    ae = AutoencoderKL(ddconfig=dict(ddconfig), embed_dim=LATENT_CHANNELS)
    seeded_init_(ae, seed)
    return comfy.sd.VAE(sd=ae.state_dict(), config={"params": {"ddconfig": ddconfig, "embed_dim": LATENT_CHANNELS}})


def build_dit_bundle(name: str = "flux", seed: int = 0):
    """MODEL, CLIP (the tiny SD1.5-shaped text encoder: CLIPTextEncode works as in a real graph) and VAE."""
    from .build import TinyBundle, build_clip

    return TinyBundle(build_dit(name, seed), build_clip("sd15", seed + 1), build_dit_vae(seed + 2))
